r"""CIFAR-100, relational KD (Park et al. 2019): CE 1 + RKD (25 x distance + 50 x angle).

  python -m kdjax.main --config=configs/cifar100/rkd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/rkd

Relations between the pooled penultimate features of the (global) batch.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "rkd": {"kind": "rkd", "weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
  }
  return config

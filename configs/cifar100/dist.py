r"""CIFAR-100, DIST (Huang et al. 2022): CE 1 + DIST (inter 2, intra 2, temperature 4).

  python -m kdjax.main --config=configs/cifar100/dist.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/dist

Pearson correlation between the student's and teacher's class probabilities, per example
(inter-class) and per class over the batch (intra-class).
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "dist": {"kind": "dist", "weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0},
  }
  return config

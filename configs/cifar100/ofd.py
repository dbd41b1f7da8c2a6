r"""CIFAR-100, overhaul of feature distillation (Heo et al. 2019): CE 1 + 1e-3 x OFD.

  python -m kdjax.main --config=configs/cifar100/ofd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/ofd

mdistiller's CIFAR-100 settings: the pre-ReLU maps of the pair's equal-resolution stages, 1x1
conv + BN connectors onto the teacher's channels, the partial L2 distance with the margins of the
teacher's BatchNorm before each ReLU (read from the trained teacher), layer i of n weighted
1 / 2^(n - i - 1), feature weight 1e-3 beside cross-entropy, for the 240 epochs of the protocol.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "ofd": cifar100.preact_term(pair, "ofd", weight=1e-3),
  }
  return config

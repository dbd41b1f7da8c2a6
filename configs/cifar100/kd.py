r"""CIFAR-100, KD (Hinton et al. 2015): CE 0.1 + KD 0.9 at temperature 4.

  python -m kdjax.main --config=configs/cifar100/kd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/kd

The text after ':' names the pair (kdjax.configs.cifar100.PAIRS; default resnet32x4-resnet8x4).
The protocol (240 epochs, SGD, step decay) and the published numbers: docs/cifar100.md.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  return cifar100.protocol(pair)

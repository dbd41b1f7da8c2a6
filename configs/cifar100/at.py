r"""CIFAR-100, attention transfer (Zagoruyko & Komodakis 2017): CE 1 + 1000 x AT (p = 2).

  python -m kdjax.main --config=configs/cifar100/at.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/at

Attention maps of every stage pair of equal resolution, summed (the CRD benchmark's weight).
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  student, teacher = cifar100.get_pair(pair).attention
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "at": {"kind": "attention_transfer", "weight": 1000.0, "p": 2,
             "student": student, "teacher": teacher},
  }
  return config

r"""CIFAR-100, neuron selectivity transfer (Huang & Wang 2017): CE 1 + 50 x NST.

  python -m kdjax.main --config=configs/cifar100/nst.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/nst

The polynomial-kernel MMD (d = 2, c = 0) between the normalised activations of every stage pair
of equal resolution, summed, with the CRD benchmark's weight 50 (RepDistiller's numbers are in
docs/cifar100.md).
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  student, teacher = cifar100.get_pair(pair).attention
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "nst": {"kind": "nst", "weight": 50.0, "student": student, "teacher": teacher},
  }
  return config

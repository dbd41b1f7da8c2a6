r"""CIFAR-100, two stages: a FitNets hint stage (20 epochs), then KD (CE 0.1 + KD 0.9, T 4).

  python -m kdjax.main --config=configs/cifar100/fitnets_then_kd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/fitnets_then_kd

The stages are declared in config.stages: during the first only the hint term counts, during the
second only CE and KD; the learning-rate schedule runs over both.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  student, teacher = cifar100.get_pair(pair).hint
  config.objective = {
      "hint": {"kind": "fitnets", "weight": 100.0, "student": student, "teacher": teacher,
               "adapter": "conv3x3_bn_relu"},
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0},
  }
  config.stages = ({"steps": cifar100.epochs(20), "terms": ("hint",)},
                   {"steps": 0, "terms": ("ce", "kd")})
  return config

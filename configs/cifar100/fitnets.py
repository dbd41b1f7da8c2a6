r"""CIFAR-100, FitNets (Romero et al. 2015): CE 1 + 100 x hint MSE on the middle stage.

  python -m kdjax.main --config=configs/cifar100/fitnets.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/fitnets

Trained jointly in one stage, as the CRD benchmark does; RepDistiller's regressor (3x3
convolution, BatchNorm, ReLU) maps the student's map to the teacher's channels. The two-stage form is configs/cifar100/fitnets_then_kd.py.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  student, teacher = cifar100.get_pair(pair).hint
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "hint": {"kind": "fitnets", "weight": 100.0, "student": student, "teacher": teacher,
               "adapter": "conv3x3_bn_relu"},
  }
  return config

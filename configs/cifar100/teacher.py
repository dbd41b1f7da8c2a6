r"""CIFAR-100, a teacher alone: the benchmark protocol at learning rate 0.05.

  python -m kdjax.main --config=configs/cifar100/teacher.py:resnet32x4 \
      --workdir=$HOME/kdjax/cifar100/teachers/resnet32x4

Then distil from it in any recipe with
--config.teacher.checkpoint=$HOME/kdjax/cifar100/teachers/resnet32x4/teacher
(every recipe trains its own teacher when config.teacher.checkpoint is empty).
"""
from kdjax.configs import cifar100


def get_config(model=None):
  return cifar100.teacher(model)

r"""CIFAR-100, multi-level logit distillation (Jin et al. 2023): CE 1 + MLKD (T = 4, 3, 5, 2, 6).

  python -m kdjax.main --config=configs/cifar100/mlkd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/mlkd

Instance, batch and class-level alignment of the logits at five temperatures, with the
reference's reductions (kdjax.losses.mlkd, exact_reference=True). Augmentation: the paper trains
on a weak and a strong (AutoAugment-style) view of every image; this recipe feeds one view
(views=1, the strong view equal to the weak one) because kdjax.data does not yet produce the
two-view batch [weak; strong] that views=2 reads, so it does not reproduce the paper's number.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "mlkd": {"kind": "mlkd", "weight": 1.0, "temperatures": (4.0, 3.0, 5.0, 2.0, 6.0),
               "views": 1},
  }
  return config

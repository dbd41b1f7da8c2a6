r"""CIFAR-100, activation boundaries (Heo et al. 2019): 30 epochs of AB alone, then CE.

  python -m kdjax.main --config=configs/cifar100/ab.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/ab

RepDistiller's protocol (its numbers are in docs/cifar100.md): the student and 1x1 conv + BN
connectors learn the teacher's activation boundaries on the pre-ReLU maps of the pair's
equal-resolution stages for 30 epochs (margin 1, layer weights 2^(i - n + 1), scale 3e-3; the
distillation stage as RepDistiller's init_epochs), then the student trains with cross-entropy
alone for the 240 epochs of the protocol (RepDistiller runs these methods without the KD loss).
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ab": cifar100.preact_term(pair, "activation_boundary", margin=1.0),
      "ce": {"kind": "cross_entropy", "weight": 1.0},
  }
  return cifar100.with_init_stage(config, "ab", ("ce",))

r"""CIFAR-100, flow of solution procedure (Yim et al. 2017): 30 epochs of FSP alone, then CE.

  python -m kdjax.main --config=configs/cifar100/fsp.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/fsp

RepDistiller's protocol (its numbers are in docs/cifar100.md): the student learns the teacher's
FSP matrices between consecutive maps (the stem and every stage) for 30 epochs, then trains with
cross-entropy alone for the 240 epochs of the protocol. FSP needs equal channel counts map by
map, so only the pairs of one family have this recipe (RepDistiller has no FSP number for
resnet50 -> mobilenetv2 or resnet32x4 -> shufflenetv2 either).
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  layers = cifar100.fsp_layers(pair)
  config.objective = {
      "fsp": {"kind": "fsp", "weight": 1.0, "student": layers, "teacher": layers},
      "ce": {"kind": "cross_entropy", "weight": 1.0},
  }
  return cifar100.with_init_stage(config, "fsp", ("ce",))

r"""CIFAR-100, correlation congruence (Peng et al. 2019): CE 1 + 0.02 x CC.

  python -m kdjax.main --config=configs/cifar100/cc.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/cc

128-d linear embeddings of both penultimate features (RepDistiller's LinearEmbed), the paper's
Gaussian-RBF correlation (gamma 0.4, second-order Taylor expansion) over the global batch; the
weight 0.02 is the CRD benchmark's. The benchmark's own CC code is a kernel-free surrogate, so
its published numbers (docs/cifar100.md) come from a slightly different loss.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "cc": {"kind": "correlation_congruence", "weight": 0.02, "feat_dim": 128, "gamma": 0.4,
             "order": 2},
  }
  return config

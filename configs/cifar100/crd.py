r"""CIFAR-100, CRD (Tian et al. 2020): CE 1 + 0.8 x contrastive loss with memory banks.

  python -m kdjax.main --config=configs/cifar100/crd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/crd

128-d embeddings of the penultimate features, 16384 negatives of other classes (the reference
sampler's mode='exact'; the term learns each example's class from the batches it sees) drawn from
two memory banks of one row per training example (momentum 0.5), NCE temperature 0.07. The banks are objective state:
checkpointed and resumed with the run.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "crd": {"kind": "crd", "weight": 0.8, "feat_dim": 128, "num_negatives": 16384,
              "nce_temperature": 0.07, "momentum": 0.5, "negatives": "other_class"},
  }
  return config

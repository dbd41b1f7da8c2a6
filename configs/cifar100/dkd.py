r"""CIFAR-100, DKD (Zhao et al. 2022): CE 1 + DKD (alpha 1, beta per pair, T 4), 20-epoch warm-up.

  python -m kdjax.main --config=configs/cifar100/dkd.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/dkd

beta is 8, except 2 for the resnet56 pair and 6 for the WRN and VGG pairs (mdistiller's values).
DKD's weight ramps linearly from 0 over the first 20 epochs.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "dkd": {"kind": "dkd", "weight": 1.0, "alpha": 1.0, "beta": cifar100.get_pair(pair).dkd_beta,
              "temperature": 4.0, "warmup_steps": cifar100.epochs(20)},
  }
  return config

"""The default config: every key kdjax reads, with its default value.

The defaults live in ``kdjax.train.base_config()`` (so they can be imported from any
directory); a variant config starts from them and overrides a few fields::

  from kdjax.train import base_config

  def get_config():
    config = base_config()
    config.total_steps = 5000
    config.objective = {"ce": {"kind": "cross_entropy", "weight": 1.0},
                        "dkd": {"kind": "dkd", "weight": 1.0, "warmup_steps": 1000}}
    return config

Run it as is (a small CNN teacher and an MLP student on the bundled digits):

  python -m kdjax.main --config=configs/base.py --workdir=/tmp/kdjax_base
"""
from kdjax.train import base_config


def get_config():
  return base_config()

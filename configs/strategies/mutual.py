"""Deep mutual learning: two MLP students trained together, beside each trained alone.

Runs on the bundled digits, offline, in well under a minute on a laptop CPU:

  python -m kdjax.main --config=configs/strategies/mutual.py --workdir=/tmp/kdjax_mutual

Runs: ``alone_0`` / ``alone_1`` (each student with cross-entropy alone) and ``mutual`` (both
students together, each also matching the other's predictions; Zhang et al. 2018). The students
of ``mutual`` start from the same initialisation and see the same batches as their ``alone``
runs, so the comparison isolates the mutual term. results.json's ``mutual`` entry holds each
student's accuracy (``accuracy_0``, ``accuracy_1``) and their mean.
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=32, total_steps=600, eval_every=200, checkpoint_every=200)
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (32,)}
  config.models = {"peer": {"model": "mlp", "model_kwargs": {"hidden": (64, 32)}}}
  common.adam(config, 3e-3)
  config.runs = (
      {"name": "alone_0", "kind": "supervised", "model": "student"},
      {"name": "alone_1", "kind": "supervised", "model": "peer"},
      {"name": "mutual", "kind": "mutual", "models": ("student", "peer"), "temperature": 1.0,
       "kd_weight": 1.0},
  )
  return config

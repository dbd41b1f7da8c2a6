"""Quickstart: distil a CNN teacher into a small MLP on the bundled digits dataset, offline.

Trains the teacher, the student alone (the baseline) and the student distilled from the
teacher, then prints a comparison table. Runs on a laptop CPU in well under a minute:

  python -m kdjax.main --config=configs/quickstart.py --workdir=/tmp/kdjax_quickstart

Try another seed with ``--config.seed=1``, or another objective term weight with
``--config.objective.kd.weight=0.5`` (use a new --workdir for each config).
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=64, total_steps=500, eval_every=100, checkpoint_every=100)
  config.seed = 0

  # Rate 0.2 rather than 0.05: the same 400 steps then also train the teacher well past 90% on
  # real MNIST (--config.data.name=idx:<dir>), where 0.05 stops short (89%).
  common.teacher(config, "cnn_small", total_steps=400, learning_rate=0.2)

  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (8,)}

  common.momentum_cosine(config, learning_rate=0.05, weight_decay=1e-4)
  config.objective = common.ce_and_kd(0.1, 0.9, temperature=2.0)
  return config

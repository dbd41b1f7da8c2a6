"""Born-again networks: generation g + 1 distils from the trained generation g (same model).

  python -m kdjax.main --config=configs/strategies/born_again.py --workdir=/tmp/kdjax_ban

Runs: ``gen_0`` (the model trained from the labels), then ``gen_1`` ... ``gen_{G-1}``, each
a fresh initialisation (``seed`` g) distilled from the previous generation with
``config.objective`` (Furlanello et al. 2018). For a teacher-assistant chain (Mirzadeh et al.
2020), declare models of decreasing size instead: teacher -> assistant -> student, each a
'distill' run whose ``teachers`` is the run before it (see docs/strategies.md).
"""
from kdjax.configs import common

GENERATIONS = 3


def get_config():
  config = common.digits(batch_size=64, total_steps=500, eval_every=250, checkpoint_every=250)
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (32,)}
  common.momentum_cosine(config, learning_rate=0.05, weight_decay=1e-4)
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=2.0)
  runs = [{"name": "gen_0", "kind": "supervised", "model": "student"}]
  for g in range(1, GENERATIONS):
    runs.append({"name": f"gen_{g}", "kind": "distill", "model": "student", "seed": g,
                 "teachers": (f"gen_{g - 1}",)})
  config.runs = tuple(runs)
  return config

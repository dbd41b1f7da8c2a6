"""Multi-teacher distillation: three teachers of different shapes into one small student.

  python -m kdjax.main --config=configs/strategies/multi_teacher.py --workdir=/tmp/kdjax_multi

Runs: ``teacher``, ``teacher_b``, ``teacher_c`` (trained with cross-entropy; to load a trained
teacher instead, declare it with kind 'load' via ``config.teacher.checkpoint``), ``student``
(the student alone) and ``student_kd`` (distilled from the three teachers at once: their
averaged probabilities, ``kdjax.strategies.ensemble_teacher(combine='mean_probs')``, all run
inside the student's compiled step).
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=64, total_steps=500, eval_every=250, checkpoint_every=250)
  config.teacher.model = "mlp"
  config.teacher.model_kwargs = {"hidden": (128,)}
  config.teacher.total_steps = 400
  config.models = {
      "teacher_b": {"model": "mlp", "model_kwargs": {"hidden": (64, 64)}},
      "teacher_c": {"model": "cnn_small"},
  }
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (8,)}
  common.momentum_cosine(config, learning_rate=0.05, weight_decay=1e-4)
  config.objective = common.ce_and_kd(0.1, 0.9, temperature=2.0)
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "teacher_b", "kind": "supervised", "model": "teacher_b", "steps": 400},
      {"name": "teacher_c", "kind": "supervised", "model": "teacher_c", "steps": 400},
      {"name": "student", "kind": "supervised", "model": "student", "compare": "teacher"},
      {"name": "student_kd", "kind": "distill", "model": "student",
       "teachers": ("teacher", "teacher_b", "teacher_c"), "combine": "mean_probs"},
  )
  return config

"""Routed teachers: two teachers, each example of the student's training text distilled from one.

  python -m kdjax.main --config=configs/lm/routed.py --workdir=/tmp/kdjax_routed

The bundled text (``text:stdlib``, bytes as tokens). Runs: ``teacher`` (3 layers, d_model 128)
and ``teacher_b`` (2 layers, d_model 96), each trained on the whole training split;
``student`` (1 layer, d_model 64, cross-entropy alone) and ``student_routed`` (0.5 CE + 0.5
token KD at T = 1, ``combine='route'``): the text has no ``teacher_id`` field, so the first half
of the training windows is distilled from ``teacher`` and the second half from ``teacher_b``;
each teacher runs in the step on its own examples only (``kdjax.lm.routed_teacher``, capacity =
the batch size). Data with a ``teacher_id`` field routes by it instead.
"""
from kdjax.configs import common


def get_config():
  config = common.text_lm_kd()
  config.models = {"teacher_b": {"model": "transformer_lm",
                                 "model_kwargs": common.transformer_lm_kwargs(96, 2)}}
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "teacher_b", "kind": "supervised", "model": "teacher_b", "steps": 600},
      {"name": "student", "kind": "supervised", "model": "student", "compare": "teacher"},
      {"name": "student_routed", "kind": "distill", "model": "student",
       "teachers": ("teacher", "teacher_b"), "combine": "route"},
  )
  return config

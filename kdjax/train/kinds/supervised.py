"""``supervised``: trains ``model`` with cross-entropy on the labels.

``compare``: an earlier run whose model the evaluation measures agreement with (the standard
pipeline's baseline ``student`` compares with ``teacher``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base


@dataclasses.dataclass(frozen=True)
class Supervised(base.Run):
  compare: str = ""

  reads: ClassVar[tuple[str, ...]] = ("init_from", "compare")

  def reuse_key(self) -> str:
    """The config key a new workdir can point at this finished run instead of retraining it."""
    return "teacher.checkpoint" if self.model == "teacher" else ""


def plan(ctx: base.Context, decl: Supervised) -> RunPlan:
  run_data = ctx.data_for(decl.classes)
  label_key, task = run_data.shapes.label_key, run_data.task
  compare = decl.compare
  return base.student_plan(ctx, decl, make_objective=lambda: task.supervised(label_key),
                           eval_teacher=(lambda: ctx.trained(compare)) if compare else None,
                           teacher_runs=(compare,))


KIND = base.RunKind(Supervised, plan)

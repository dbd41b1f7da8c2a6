"""``load``: the trained teacher of ``config.teacher.checkpoint``, only evaluated (0 steps),
with the metrics of the dataset's task (accuracy; mean IoU; COCO mAP).

The checkpoint is a kdjax run (its directory, ``checkpoints/`` or one step) or a Hugging Face
model directory (``config.json`` + safetensors), whose weights ``kdjax.models.from_hf`` has
already read when the model was built (:func:`kdjax.train.builders.make_model`).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from kdjax import models
from kdjax.train import builders
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base


@dataclasses.dataclass(frozen=True)
class Load(base.Run):
  model: str = "teacher"

  external: ClassVar[bool] = True

  def section(self) -> str:
    return "teacher"

  def checkpoint(self, ctx: base.Context) -> tuple[str, str]:
    return str(ctx.config.teacher.checkpoint), "config.teacher.checkpoint"

  def load_variables(self, ctx: base.Context, model: models.Model):
    if builders.hf_source(ctx.config.teacher) is not None:
      return model.params, model.model_state
    return super().load_variables(ctx, model)


def plan(ctx: base.Context, decl: Load) -> RunPlan:
  data = ctx.data
  # The task's own objective (cross-entropy; a detector's point_detection), whose taps the
  # evaluation reads too (a detector's box_logits).
  make_objective = lambda: data.task.supervised(data.shapes.label_key)
  out = base.student_plan(
      ctx, decl, make_objective=make_objective,
      make_student=lambda: ctx.trained(decl.name, taps=make_objective().needs.student))
  out.summary = lambda host: {"params": models.param_count(host.student().params),
                              "model": builders.model_name(ctx.config.teacher),
                              "model_section": "teacher",
                              "checkpoint": str(ctx.config.teacher.checkpoint)}
  out.total_steps = 0
  return out


KIND = base.RunKind(Load, plan)

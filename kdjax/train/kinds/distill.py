"""``distill``: trains ``model`` with ``objective`` from ``teachers``.

``objective`` defaults to ``config.objective`` (with ``config.stages``); several ``teachers``
(earlier runs) are combined by :func:`kdjax.strategies.ensemble_teacher` with ``combine``. With
``config.teacher_cache.enabled`` the one teacher's outputs are read from a cache built before
the run (:mod:`kdjax.train.kinds._cached_teacher`) and the step runs no teacher.

The entry names the run's ``baseline`` when an earlier ``supervised`` run trained the same
model section and compared itself with one of these teachers (the standard pipeline's
``student``): tables then show the distillation gain.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kdjax import strategies
from kdjax.train import builders
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import _cached_teacher
from kdjax.train.kinds import base
from kdjax.train.kinds import supervised


@dataclasses.dataclass(frozen=True)
class Distill(base.Run):
  teachers: tuple[str, ...] = ()
  objective: Any = None
  combine: str = "mean_logits"

  reads: ClassVar[tuple[str, ...]] = ("init_from", "teachers")


def plan(ctx: base.Context, decl: Distill) -> RunPlan:
  if not decl.teachers:
    raise ConfigError(f"run '{decl.name}' (kind '{decl.kind}') needs teachers=(run names, ...)")
  data = ctx.data_for(decl.classes)
  spec = decl.objective or ctx.config.objective
  stages = () if decl.objective else ctx.config.stages
  out = (_on_cache(ctx, decl, data, spec, stages) if ctx.config.teacher_cache.enabled else
         _online(ctx, decl, data, spec, stages))
  baseline = _baseline(ctx, decl)
  if baseline:
    summary = out.summary
    out.summary = lambda host: {**summary(host), "baseline": baseline}
  return out


def _online(ctx: base.Context, decl: Distill, data: Any, spec: Any, stages: Any) -> RunPlan:
  names = decl.teachers

  def make_objective():
    untapped = ctx.trained(names[0]) if len(names) == 1 else None
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes,
                  "teacher_model": untapped})

  def teacher(objective):
    found = [ctx.trained(n, taps=objective.needs.teacher) for n in names]
    if len(found) == 1:
      return found[0]
    return strategies.ensemble_teacher(found, combine=decl.combine)

  return base.student_plan(ctx, decl, make_objective=make_objective, teacher=teacher,
                           teacher_runs=names)


def _on_cache(ctx: base.Context, decl: Distill, data: Any, spec: Any, stages: Any) -> RunPlan:
  """The student trains on its teacher's cache; evaluation still compares with the teacher."""
  spec = _cached_teacher.objective_on_cache(spec, ctx.config.teacher_cache, run=decl.name)
  cached = _cached_teacher.cached_data(
      ctx, decl, data, spec, num_classes=decl.num_classes(ctx.decls) or data.shapes.num_classes)
  run = decl.teachers[0]

  def make_objective():
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes})

  out = base.student_plan(ctx, decl, make_objective=make_objective, data=cached,
                          eval_teacher=lambda: ctx.trained(run), teacher_runs=(run,))
  out.prepare = cached.build
  return out


def _baseline(ctx: base.Context, decl: Distill) -> str:
  for other in ctx.decls.values():
    if other.name == decl.name:
      return ""
    if (isinstance(other, supervised.Supervised) and other.compare in decl.teachers and
        other.section() == decl.section() and other.classes == decl.classes):
      return other.name
  return ""


KIND = base.RunKind(Distill, plan)

"""``distill``: trains ``model`` with ``objective`` from ``teachers``.

``objective`` defaults to ``config.objective`` (with ``config.stages``); several ``teachers``
(earlier runs) are combined by :func:`kdjax.strategies.ensemble_teacher` with ``combine``, or,
with ``combine='route'``, each example is distilled from the one teacher its ``teacher_id``
names (:mod:`kdjax.train.kinds._routed`; ``capacity``: rows per teacher forward). With
``config.teacher_cache.enabled`` the one teacher's outputs are read from a cache built before
the run (:mod:`kdjax.train.kinds._cached_teacher`) and the step runs no teacher.

The entry names the run's ``baseline`` when an earlier ``supervised`` run trained the same
model section and compared itself with one of these teachers (the standard pipeline's
``student``): tables then show the distillation gain.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kdjax import lm
from kdjax import strategies
from kdjax.train import builders
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import _cached_teacher
from kdjax.train.kinds import _routed
from kdjax.train.kinds import base
from kdjax.train.kinds import supervised


@dataclasses.dataclass(frozen=True)
class Distill(base.Run):
  teachers: tuple[str, ...] = ()
  objective: Any = None
  combine: str = "mean_logits"
  capacity: int = 0

  reads: ClassVar[tuple[str, ...]] = ("init_from", "teachers")


def plan(ctx: base.Context, decl: Distill) -> RunPlan:
  if not decl.teachers:
    raise ConfigError(f"run '{decl.name}' (kind '{decl.kind}') needs teachers=(run names, ...)")
  data = ctx.data_for(decl.classes)
  spec = decl.objective or ctx.config.objective
  stages = () if decl.objective else ctx.config.stages
  if decl.capacity and decl.combine != ROUTE:
    raise ConfigError(f"run '{decl.name}': capacity={decl.capacity!r} applies to "
                      f"combine='route' only, but combine={decl.combine!r}; drop capacity or "
                      "set combine='route'")
  if ctx.config.teacher_cache.enabled and decl.combine == ROUTE:
    raise ConfigError(f"run '{decl.name}': combine='route' runs its teachers in the step, but "
                      "config.teacher_cache.enabled=True replaces the teacher by a cache of one "
                      "teacher; set config.teacher_cache.enabled=False")
  out = (_on_cache(ctx, decl, data, spec, stages) if ctx.config.teacher_cache.enabled else
         _online(ctx, decl, data, spec, stages))
  baseline = _baseline(ctx, decl)
  if baseline:
    summary = out.summary
    out.summary = lambda host: {**summary(host), "baseline": baseline}
  return out


def _online(ctx: base.Context, decl: Distill, data: Any, spec: Any, stages: Any) -> RunPlan:
  names = decl.teachers
  if decl.combine == ROUTE:
    return _routed_plan(ctx, decl, data, spec, stages)

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


ROUTE = "route"  # combine: one teacher per example, by the data's teacher_id.


def _routed_plan(ctx: base.Context, decl: Distill, data: Any, spec: Any,
                 stages: Any) -> RunPlan:
  """Each example is distilled from the teacher its ``teacher_id`` names; each teacher runs on
  its own examples (:func:`kdjax.lm.routed_teacher`). Evaluation scores the student alone."""
  names = decl.teachers
  if int(decl.capacity) != decl.capacity or decl.capacity < 0:
    raise ConfigError(f"run '{decl.name}': capacity must be an integer >= 0 (0: the batch "
                      f"size), got {decl.capacity!r}")
  routed = _routed.RoutedData(data, run=decl.name, num_teachers=len(names),
                              capacity=int(decl.capacity),
                              input_key=base.input_key(ctx, decl.section(), data))

  def make_objective():
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes})

  def teacher(objective):
    if objective.needs.teacher:
      raise ConfigError(f"run '{decl.name}': combine='route' serves the routed teacher's logits "
                        f"only, but the objective reads teacher features "
                        f"{list(objective.needs.teacher)}; drop those terms")
    return lm.routed_teacher([ctx.trained(n) for n in names], capacity=decl.capacity or None)

  return base.student_plan(ctx, decl, make_objective=make_objective, teacher=teacher,
                           eval_teacher=lambda: None, data=routed, teacher_runs=names,
                           teacher_input=lm.ROUTED_INPUTS_KEY)


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

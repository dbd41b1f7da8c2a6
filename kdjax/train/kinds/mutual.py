"""``mutual``: deep mutual learning of the models ``models`` (two or more model sections).

All are trained together by :func:`kdjax.strategies.mutual_step` with the mutual KL at
``temperature`` weighted by ``kd_weight``. Its results entry holds each member's evaluation
under ``members`` and their mean ``accuracy``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from kdjax import models
from kdjax import step as step_lib
from kdjax import strategies
from kdjax.train import evaluation
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base


@dataclasses.dataclass(frozen=True)
class Mutual(base.Run):
  models: tuple[str, ...] = ()
  temperature: float = 1.0
  kd_weight: float = 1.0

  def section(self) -> str:
    return self.models[0] if self.models else self.model


def _outputs_of(state: strategies.MutualState, k: int, batch: Mapping[str, jax.Array]):
  view = step_lib.DistillState(
      step=state.step, params={"student": state.params[k], "objective": {}},
      student_state=state.model_states[k], objective_state={}, opt_state=(), rng=state.rng,
      teacher_params=None, teacher_state=None, student_apply=state.applies[k],
      teacher_apply=None, tx=state.tx, objective=None, input_key=state.input_key,
      label_key=state.label_key)
  return step_lib.eval_step(view, batch)


def plan(ctx: base.Context, decl: Mutual) -> RunPlan:
  sections = tuple(decl.models)
  if len(sections) < 2:
    raise ConfigError(f"run '{decl.name}' (kind 'mutual') needs models=(two or more model "
                      "sections, e.g. 'student' and a key of config.models)")
  c, data = ctx.config, ctx.data_for(decl.classes)
  tx, schedule, hint = base.optimizer_of(ctx, decl, data)

  def init_state():
    students = [ctx.model(s, seed=decl.seed + (i if sections.count(s) > 1 else 0), data=data)
                for i, s in enumerate(sections)]
    try:
      return strategies.MutualState.create(
          students, tx, ctx.key(sections[0], 1, decl.seed), data.example_batch(c.batch_size),
          temperature=float(decl.temperature), kd_weight=float(decl.kd_weight),
          input_key=data.shapes.input_key, label_key=data.shapes.label_key)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"run '{decl.name}': {e}") from None

  base_reduce = evaluation.make_reduce_fn(data.shapes.num_classes)
  n = len(sections)

  def eval_fn(state, batch, axis_name=None):
    del axis_name
    return {str(k): _outputs_of(state, k, batch) for k in range(n)}

  def reduce_fn(out, batch):
    return {f"{k}/{name}": v for k in range(n)
            for name, v in base_reduce(out[str(k)], batch).items()}

  def evaluate(runner, state):
    total = None
    for batch in data.eval_batches():
      total = evaluation.accumulate(total, runner.eval(state, batch, reduce_fn))
    members = [evaluation.finalize({name.split("/", 1)[1]: v for name, v in total.items()
                                    if name.startswith(f"{k}/")}) for k in range(n)]
    return {"accuracy": float(np.mean([m["accuracy"] for m in members])),
            **{f"accuracy_{k}": m["accuracy"] for k, m in enumerate(members)}}

  def summary(host):
    return {"params": sum(models.param_count(p) for p in host.params),
            "model": "+".join(ctx.section(s).model for s in sections),
            "model_section": "+".join(sections),
            "members": [{"section": s, "model": ctx.section(s).model,
                         "params": models.param_count(p)} for s, p in zip(sections, host.params)],
            **base.class_names(ctx)}

  return RunPlan(name=decl.name, total_steps=decl.total_steps(c), init_state=init_state,
                 make_runner=lambda: ctx.runner(step_fn=strategies.mutual_step, eval_fn=eval_fn),
                 data=data, evaluate=evaluate, summary=summary, batch_size=c.batch_size,
                 seed=c.seed, learning_rate=schedule, fix_hint=hint)


KIND = base.RunKind(Mutual, plan)

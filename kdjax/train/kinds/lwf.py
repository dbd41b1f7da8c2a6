"""``lwf``: Learning without Forgetting.

``old`` names the run trained on the old task (a run with ``classes``); this run widens its
classifier (``head``, the path of the classifier's parameters) to the new ``classes`` and trains
on the new task's data alone, with the old model guarding the old outputs (``kd_weight`` 0:
plain fine-tuning). Its entry adds ``old_accuracy`` (old-task test images, argmax over the old
outputs), ``new_accuracy`` (new task, new outputs) and ``accuracy`` (every test image, all
outputs).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax.numpy as jnp
import numpy as np

from kdjax import step as step_lib
from kdjax import strategies
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base


@dataclasses.dataclass(frozen=True)
class Lwf(base.Run):
  old: str = ""
  kd_weight: float = 1.0
  temperature: float = 2.0
  head: str = "head"

  reads: ClassVar[tuple[str, ...]] = ("init_from", "old")

  def num_classes(self, decls: Mapping[str, base.Run]) -> int | None:
    """The widened classifier: the old task's classes and this run's."""
    return max(tuple(self.classes) + tuple(decls[self.old].classes)) + 1


def _restricted_eval(allowed: np.ndarray):
  """``eval_step`` with the logits outside ``allowed`` set to -inf (a multi-head evaluation)."""
  penalty = jnp.where(jnp.asarray(allowed), 0.0, -jnp.inf)

  def eval_fn(state, batch, axis_name=None):
    del axis_name

    def apply(params, model_state, inputs, **kwargs):
      out, new_state = state.student_apply(params, model_state, inputs, **kwargs)
      logits = out.logits.astype(jnp.float32)
      return out.replace(logits=logits + jnp.broadcast_to(penalty, logits.shape)), new_state

    return step_lib.eval_step(state.replace(student_apply=apply), batch)

  return eval_fn


def plan(ctx: base.Context, decl: Lwf) -> RunPlan:
  if not decl.old or not decl.classes:
    raise ConfigError(f"run '{decl.name}' (kind 'lwf') needs old=(the old task's run) and "
                      "classes=(the new task's labels)")
  old_classes, new_classes = tuple(ctx.decls[decl.old].classes), tuple(decl.classes)
  if not old_classes or set(old_classes) & set(new_classes):
    raise ConfigError(f"run '{decl.name}': the old run {decl.old!r} needs classes=(...) "
                      f"disjoint from this run's {new_classes}")
  num_old = max(old_classes) + 1
  num_all = decl.num_classes(ctx.decls)
  section = decl.section()

  def make_student():
    old = ctx.trained(decl.old)
    widened = ctx.model(section, num_classes=num_all, seed=decl.seed)
    try:
      params = strategies.expand_head(old.params, num_all - num_old, head=decl.head,
                                      rng=ctx.key(section, 0, 7919))
    except ValueError as e:
      raise ConfigError(f"run '{decl.name}': {e}; set head= to the classifier's path") from None
    return dataclasses.replace(widened, params=params, model_state=old.model_state)

  def make_objective():
    return strategies.lwf_objective(num_old, temperature=float(decl.temperature),
                                    lwf_weight=float(decl.kd_weight),
                                    label_key=ctx.data.shapes.label_key)

  views = {"old_accuracy": old_classes, "new_accuracy": new_classes}

  def evaluate(runner, state):
    host = runner.host_state(state)
    out = {"accuracy": ctx.data.evaluate(runner, state, num_classes=num_all)["accuracy"]}
    for key, classes in views.items():
      allowed = np.isin(np.arange(num_all), classes)
      view_runner = ctx.runner(eval_fn=_restricted_eval(allowed))
      out[key] = ctx.data_for(classes).evaluate(view_runner, view_runner.put_state(host),
                                                num_classes=num_all)["accuracy"]
    return out

  return base.student_plan(ctx, decl, make_objective=make_objective,
                           teacher=lambda _: strategies.lwf_teacher(ctx.trained(decl.old),
                                                                    num_new=num_all - num_old),
                           make_student=make_student, evaluate=evaluate)


KIND = base.RunKind(Lwf, plan)

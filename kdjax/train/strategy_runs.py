"""Run kinds of the strategies beyond one teacher and one student: mutual learning and LwF.

* ``mutual``: deep mutual learning of the models ``models`` (two or more model sections), all
  trained together by :func:`kdjax.strategies.mutual_step` with the mutual KL at
  ``temperature`` weighted by ``kd_weight``. Its results entry holds each member's evaluation
  under ``members`` and their mean ``accuracy``.
* ``lwf``: Learning without Forgetting. ``old`` names the run trained on the old task (a run
  with ``classes``); this run widens its classifier (``head``, the path of the classifier's
  parameters) to the new ``classes`` and trains on the new task's data alone, with the old
  model guarding the old outputs (``kd_weight`` 0: plain fine-tuning). Its entry adds
  ``old_accuracy`` (old-task test images, argmax over the old outputs), ``new_accuracy`` (new
  task, new outputs) and ``accuracy`` (every test image, all outputs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import models
from kdjax import step as step_lib
from kdjax import strategies
from kdjax.train import evaluation
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.runs import Context, kind, model_classes, optimizer_of, steps_of, student_plan


def _outputs_of(state: strategies.MutualState, k: int, batch: Mapping[str, jax.Array]):
  view = step_lib.DistillState(
      step=state.step, params={"student": state.params[k], "objective": {}},
      student_state=state.model_states[k], objective_state={}, opt_state=(), rng=state.rng,
      teacher_params=None, teacher_state=None, student_apply=state.applies[k],
      teacher_apply=None, tx=state.tx, objective=None, input_key=state.input_key,
      label_key=state.label_key)
  return step_lib.eval_step(view, batch)


@kind("mutual", ("models", "temperature", "kd_weight"))
def mutual(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  sections = tuple(decl.get("models", ()))
  if len(sections) < 2:
    raise ConfigError(f"run '{decl['name']}' (kind 'mutual') needs models=(two or more model "
                      "sections, e.g. 'student' and a key of config.models)")
  c, data = ctx.config, ctx.data_for(decl)
  tx, schedule, hint = optimizer_of(ctx, decl, data)
  seed = decl.get("seed", 0)

  def init_state():
    students = [ctx.model(s, seed=seed + (i if sections.count(s) > 1 else 0), data=data)
                for i, s in enumerate(sections)]
    try:
      return strategies.MutualState.create(
          students, tx, ctx.key(sections[0], 1, seed), data.example_batch(c.batch_size),
          temperature=float(decl.get("temperature", 1.0)),
          kd_weight=float(decl.get("kd_weight", 1.0)), input_key=data.shapes.input_key,
          label_key=data.shapes.label_key)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"run '{decl['name']}': {e}") from None

  base = evaluation.make_reduce_fn(data.shapes.num_classes)
  n = len(sections)

  def eval_fn(state, batch, axis_name=None):
    del axis_name
    return {str(k): _outputs_of(state, k, batch) for k in range(n)}

  def reduce_fn(out, batch):
    return {f"{k}/{name}": v for k in range(n) for name, v in base(out[str(k)], batch).items()}

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
            "members": [{"section": s, "model": ctx.section(s).model,
                         "params": models.param_count(p)} for s, p in zip(sections, host.params)]}

  return RunPlan(name=decl["name"], total_steps=steps_of(ctx, decl), init_state=init_state,
                 make_runner=lambda: ctx.runner(step_fn=strategies.mutual_step, eval_fn=eval_fn),
                 data=data, evaluate=evaluate, summary=summary, batch_size=c.batch_size,
                 seed=c.seed, learning_rate=schedule, fix_hint=hint)


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


@kind("lwf", ("old", "kd_weight", "temperature", "head"))
def lwf(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  if not decl.get("old") or not decl.get("classes"):
    raise ConfigError(f"run '{decl['name']}' (kind 'lwf') needs old=(the old task's run) and "
                      "classes=(the new task's labels)")
  old_decl = ctx.decls[decl["old"]]
  old_classes, new_classes = tuple(old_decl.get("classes", ())), tuple(decl["classes"])
  if not old_classes or set(old_classes) & set(new_classes):
    raise ConfigError(f"run '{decl['name']}': the old run {decl['old']!r} needs classes=(...) "
                      f"disjoint from this run's {new_classes}")
  num_old = max(old_classes) + 1
  num_all = model_classes(ctx, decl)
  section, head = decl.get("model", "student"), decl.get("head", "head")
  decl = {**decl, "model": section}

  def make_student():
    old = ctx.trained(decl["old"])
    widened = ctx.model(section, num_classes=num_all, seed=decl.get("seed", 0))
    try:
      params = strategies.expand_head(old.params, num_all - num_old, head=head,
                                      rng=ctx.key(section, 0, 7919))
    except ValueError as e:
      raise ConfigError(f"run '{decl['name']}': {e}; set head= to the classifier's path") from None
    return dataclasses.replace(widened, params=params, model_state=old.model_state)

  def make_objective():
    return strategies.lwf_objective(num_old, temperature=float(decl.get("temperature", 2.0)),
                                    lwf_weight=float(decl.get("kd_weight", 1.0)),
                                    label_key=ctx.data.shapes.label_key)

  views = {"old_accuracy": old_classes, "new_accuracy": new_classes}

  def evaluate(runner, state):
    host = runner.host_state(state)
    out = {"accuracy": ctx.data.evaluate(runner, state, num_classes=num_all)["accuracy"]}
    for key, classes in views.items():
      allowed = np.isin(np.arange(num_all), classes)
      view_runner = ctx.runner(eval_fn=_restricted_eval(allowed))
      view_data = ctx.data_for({"classes": classes})
      out[key] = view_data.evaluate(view_runner, view_runner.put_state(host),
                                    num_classes=num_all)["accuracy"]
    return out

  return student_plan(ctx, decl, make_objective=make_objective,
                      teacher=lambda _: strategies.lwf_teacher(ctx.trained(decl["old"]),
                                                               num_new=num_all - num_old),
                      make_student=make_student, evaluate=evaluate)

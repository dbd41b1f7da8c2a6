"""One run on the training engine: place, resume, ``fit`` with the standard actions, evaluate.

A run kind (``kdjax.train.runs``) describes a run as a :class:`RunPlan`: how to build its
initial state, its placement, its data, its evaluation and its summary. :func:`execute` does
the rest the same way for every kind: Orbax checkpoints with the data iterator's position,
exact resume, the NaN guard, preemption, logs and the final evaluation.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax

from kdjax.train import actions as actions_lib
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import loop as loop_lib
from kdjax.train import writers
from kdjax.train.errors import (CheckFailed, CheckpointError, NonFiniteLossError,
                                WorkdirError)
from kdjax.train.workdir import Workdir, is_main


@dataclasses.dataclass
class RunPlan:
  """Everything :func:`execute` needs to train one run.

  Attributes:
    name: the run's name (its directory under the workdir).
    total_steps: updates to apply.
    init_state: ``() -> state``: the fresh host state (any state with ``checkpoint_tree()``);
      traced with ``jax.eval_shape`` by the pipeline's checks before anything is written.
    make_runner: ``() -> runner`` placing the state and running its step and evaluation.
    data: the run's data (``train_iterator``, ``evaluate``).
    evaluate: ``(runner, placed_state) -> {metric: float}``.
    summary: ``(host_state) -> dict`` added to the results entry (parameters, model name).
    batch_size: the global batch size.
    seed: the data order's seed.
    learning_rate: ``step -> learning rate`` for the logs, or ``None``.
    fix_hint: how to fix a NaN (which config keys to change).
    step_fn: ``(runner) -> (state, batch) -> (state, metrics)``; ``runner.step`` by default
      (the pipeline wraps it to run the first steps checked).
    prepare: ``(watch) -> None``: work the run needs done before its state and data are built
      (building its teacher cache), given the run's :class:`PreemptionWatch`; resumable.
  """

  name: str
  total_steps: int
  init_state: Callable[[], Any]
  make_runner: Callable[[], Any]
  data: Any
  evaluate: Callable[[Any, Any], Mapping[str, float]]
  summary: Callable[[Any], Mapping[str, Any]]
  batch_size: int
  seed: int
  learning_rate: Callable[[int], Any] | None = None
  fix_hint: str = ""
  step_fn: Callable[[Any], Callable] | None = None
  prepare: Callable[[actions_lib.PreemptionWatch], None] | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
  """The run-independent settings of the engine (from the config's runtime keys)."""

  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  progress_bar: bool = True
  tensorboard: bool = True
  wandb_project: str = ""
  config: Mapping[str, Any] | None = None


def _nonfinite(plan: RunPlan, workdir: Workdir, checkpointer) -> Callable[[int, str], Exception]:
  def make(step: int, what: str) -> Exception:
    checkpointer.wait()
    steps = checkpointer.all_steps()
    if steps:
      kept = (f"the last good checkpoint, step {steps[-1]}, is kept in "
              f"{os.path.join(workdir.checkpoint_dir(plan.name), str(steps[-1]))}")
    else:
      kept = "no checkpoint had been saved yet"
    return NonFiniteLossError(f"run '{plan.name}': {what} at step {step}; training stopped and "
                              f"{kept}. {plan.fix_hint}and run it in a new --workdir",
                              run=plan.name, step=step)
  return make


def _translated(step_fn: Callable, run: str, start: int,
                make_error: Callable[[int, str], Exception]) -> Callable:
  """``step_fn`` whose checked-step failures become run-level errors naming the step."""
  position = {"step": start}

  def step(state, batch):
    position["step"] += 1
    try:
      return step_fn(state, batch)
    except ValueError as e:
      text = str(e)
      if not text.startswith("checked step"):
        raise
      text = text.split(":", 1)[1].strip()
      if "finite" in text:
        raise make_error(position["step"], text) from None
      raise CheckFailed(f"run '{run}', step {position['step']}: {text}", run=run,
                        step=position["step"]) from None

  return step


def execute(plan: RunPlan, workdir: Workdir, settings: Settings,
            watch: actions_lib.PreemptionWatch) -> tuple[dict[str, Any], Any]:
  """Trains (or resumes) ``plan`` to its last step; returns its results entry and host state."""
  if plan.prepare is not None:
    plan.prepare(watch)
  runner = plan.make_runner()
  placed = runner.put_state(plan.init_state())
  checkpointer = ckpt_lib.Checkpointer(workdir.checkpoint_dir(plan.name),
                                       keep=settings.keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(runner.host_state(placed))
  except BaseException:
    checkpointer.close()
    raise
  data_state: dict[str, Any] = {}
  start = 0
  if restored is not None:
    host, data_state, start = restored
    placed = runner.put_state(host)
    del host
    step = int(jax.device_get(runner.host_state(placed).step))
    if step != start:
      checkpointer.close()
      raise CheckpointError(f"checkpoint {start} of run '{plan.name}' holds step {step}; use a "
                            "new --workdir")
  if start > plan.total_steps:
    checkpointer.close()
    raise WorkdirError(f"run '{plan.name}' is already at step {start}, past its "
                       f"{plan.total_steps} steps; use a new --workdir")

  batches = plan.data.train_iterator(seed=plan.seed, batch_size=plan.batch_size)
  if data_state.get("iterator") is not None:
    batches.set_state(data_state["iterator"])
  elapsed_before = float(data_state.get("elapsed_s", 0.0))
  started = time.perf_counter()

  def bookkeeping():
    return {"iterator": batches.get_state(),
            "elapsed_s": elapsed_before + time.perf_counter() - started}

  writer = writers.make_writer(workdir.run_dir(plan.name), run=plan.name, start_step=start,
                               enabled=is_main(), tensorboard=settings.tensorboard,
                               wandb_project=settings.wandb_project, config=settings.config)
  make_error = _nonfinite(plan, workdir, checkpointer)
  extra = None
  if plan.learning_rate is not None:
    extra = lambda step: {"learning_rate": float(plan.learning_rate(step - 1))}
  guard = actions_lib.NanGuard(make_error, every=min(100, settings.log_every))
  log = actions_lib.LogMetrics(writer, every=settings.log_every,
                               examples_per_step=plan.batch_size, start_step=start, extra=extra)
  evaluate = lambda state: plan.evaluate(runner, state)
  loop_actions = [
      guard, log,
      actions_lib.Progress(name=plan.name, total_steps=plan.total_steps, start_step=start,
                           log=log, enabled=settings.progress_bar and is_main()),
      actions_lib.Evaluate(evaluate, writer, every=settings.eval_every, log=log),
      actions_lib.Preemption(watch, run=plan.name,
                             checkpoint_dir=workdir.checkpoint_dir(plan.name)),
      actions_lib.Checkpoint(checkpointer, every=settings.checkpoint_every,
                             host_state=runner.host_state, bookkeeping=bookkeeping, guard=guard,
                             make_error=make_error, log=log),
  ]
  step_fn = _translated(runner.step if plan.step_fn is None else plan.step_fn(runner),
                       plan.name, start, make_error)
  final_eval: dict[str, Any] = {}

  class _KeepFinal:
    def __call__(self, loop):
      if loop.last and loop.eval_metrics is not None:
        final_eval.update(loop.eval_metrics)

  loop_actions.insert(4, _KeepFinal())
  try:
    placed = loop_lib.fit(placed, step_fn, batches, total_steps=plan.total_steps,
                         start_step=start, actions=loop_actions)
    if not final_eval:  # Resumed at the last step: evaluate the restored state.
      final_eval.update(evaluate(placed))
    elapsed = bookkeeping()["elapsed_s"]
  finally:
    batches.close()
    writer.close()
    checkpointer.close()
  host = runner.host_state(placed)
  entry = {**final_eval, **plan.summary(host), "time_s": elapsed, "steps": plan.total_steps}
  return entry, host

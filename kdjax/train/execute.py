"""One run on the training engine: place, resume, ``fit`` with the standard actions, evaluate.

A run kind (:mod:`kdjax.train.kinds`) describes a run as a :class:`RunPlan`: how to build its
initial state, its placement, its data, its evaluation and its summary. :func:`execute` does
the rest the same way for every kind: Orbax checkpoints with the data iterator's position,
exact resume, the NaN guard, preemption, logs and the final evaluation. A plan of 0 steps is
only evaluated (a loaded model, a post-training quantization, an export).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from kdjax import _checked
from kdjax import workdir as contract
from kdjax.train import actions as actions_lib
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import loop as loop_lib
from kdjax.train import predictions
from kdjax.train import writers
from kdjax.train.errors import CheckFailed, CheckpointError, NonFiniteLossError, WorkdirError
from kdjax.train.ledger import Workdir


@dataclasses.dataclass
class RunPlan:
  """Everything :func:`execute` needs to train one run.

  Attributes:
    name: the run's name (its directory under the workdir).
    total_steps: updates to apply.
    init_state: ``() -> state``: the fresh host state (any state with ``checkpoint_tree()``);
      traced with ``jax.eval_shape`` by the pipeline's checks before anything is written.
      ``None``: a run without a model state (an export), only evaluated.
    make_runner: ``() -> runner`` placing the state and running its step and evaluation
      (``None`` with ``init_state``).
    data: the run's data (``train_iterator``, ``evaluate``).
    evaluate: ``(runner, placed_state) -> {metric: float}``.
    summary: ``(host_state) -> dict`` added to the results entry (parameters, model name and
      section).
    batch_size: the global batch size.
    seed: the data order's seed.
    learning_rate: ``step -> learning rate`` for the logs, or ``None``.
    fix_hint: how to fix a NaN (which config keys to change).
    prepare: ``(watch) -> None``: work the run needs done before its state and data are built
      (building its teacher cache), given the run's :class:`PreemptionWatch`; resumable.
  """

  name: str
  total_steps: int
  init_state: Callable[[], Any] | None
  make_runner: Callable[[], Any] | None
  data: Any
  evaluate: Callable[[Any, Any], Mapping[str, float]]
  summary: Callable[[Any], Mapping[str, Any]]
  batch_size: int
  seed: int
  learning_rate: Callable[[int], Any] | None = None
  fix_hint: str = ""
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
  checked_steps: int = 0  # The first steps of a run go through kdjax.checked.


def execute(plan: RunPlan, workdir: Workdir, settings: Settings,
            watch: actions_lib.PreemptionWatch) -> dict[str, Any]:
  """Trains (or resumes) ``plan`` to its last step, or evaluates a plan of 0 steps; returns its
  results entry."""
  if plan.prepare is not None:
    plan.prepare(watch)
  if plan.total_steps == 0:
    return _evaluate_only(plan, workdir)
  runner = plan.make_runner()
  checkpointer = ckpt_lib.Checkpointer(workdir.checkpoint_dir(plan.name),
                                       keep=settings.keep_checkpoints)
  try:
    placed, start, data_state = _restore(plan, runner, checkpointer)
    entry = _train(plan, runner, placed, start, data_state, checkpointer, workdir, settings,
                   watch)
  except BaseException:
    watch.at_once()  # Closing must not make a SIGTERM wait: the run is ending anyway.
    checkpointer.close(failing=True)  # The first error is the one reported.
    raise
  checkpointer.close()
  return entry


def _evaluate_only(plan: RunPlan, workdir: Workdir) -> dict[str, Any]:
  started = time.perf_counter()
  state = runner = placed = None
  if plan.init_state is not None:
    state, runner = plan.init_state(), plan.make_runner()
    placed = runner.put_state(state)
  entry = {**plan.evaluate(runner, placed), **plan.summary(state)}
  predictions.record(workdir.run_dir(plan.name), plan.data, runner, placed)
  return {**entry, "time_s": time.perf_counter() - started}


def _restore(plan: RunPlan, runner: Any, checkpointer: Any) -> tuple[Any, int, dict[str, Any]]:
  """The placed state to start from (fresh or the latest checkpoint), its step and bookkeeping."""
  placed = runner.put_state(plan.init_state())
  restored = checkpointer.restore_latest(runner.host_state(placed))
  if restored is None:
    return placed, 0, {}
  host, data_state, start = restored
  placed = runner.put_state(host)
  del host
  step = int(jax.device_get(runner.host_state(placed).step))
  if step != start:
    raise CheckpointError(f"checkpoint {start} of run '{plan.name}' holds step {step}; use a "
                          "new --workdir")
  if start > plan.total_steps:
    raise WorkdirError(f"run '{plan.name}' is already at step {start}, past its "
                       f"{plan.total_steps} steps; use a new --workdir")
  return placed, start, data_state


def _train(plan, runner, placed, start, data_state, checkpointer, workdir, settings, watch):
  batches = plan.data.train_iterator(seed=plan.seed, batch_size=plan.batch_size)
  if data_state.get("iterator") is not None:
    batches.set_state(data_state["iterator"])
  elapsed_before = float(data_state.get("elapsed_s", 0.0))
  started = time.perf_counter()

  def bookkeeping():
    return {"iterator": batches.get_state(),
            "elapsed_s": elapsed_before + time.perf_counter() - started}

  writer = writers.make_writer(workdir.run_dir(plan.name), run=plan.name, start_step=start,
                               enabled=contract.is_main(), tensorboard=settings.tensorboard,
                               wandb_project=settings.wandb_project, config=settings.config)
  make_error = _nonfinite(plan, workdir, checkpointer)
  evaluate = lambda state: plan.evaluate(runner, state)
  evaluator = actions_lib.Evaluate(evaluate, writer, every=settings.eval_every)
  try:
    placed = loop_lib.fit(
        placed, _step_fn(runner, plan.name, start, settings.checked_steps, make_error), batches,
        total_steps=plan.total_steps, start_step=start,
        actions=_standard_actions(plan, runner, start, settings, watch, writer, evaluator,
                                  checkpointer, bookkeeping, make_error, workdir))
    if evaluator.latest is not None and evaluator.latest[0] == plan.total_steps:
      final_eval = evaluator.latest[1]
    else:  # Resumed at the last step: evaluate the restored state.
      final_eval = dict(evaluate(placed))
    elapsed = bookkeeping()["elapsed_s"]
    predictions.record(workdir.run_dir(plan.name), plan.data, runner, placed)
  except BaseException:
    _close_quietly(batches, writer)  # A full disk fails the writer's close too: report it once.
    raise
  batches.close()
  writer.close()
  host = runner.host_state(placed)
  return {**final_eval, **plan.summary(host), "time_s": elapsed, "steps": plan.total_steps}


def _close_quietly(*closables: Any) -> None:
  for c in closables:
    try:
      c.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _standard_actions(plan, runner, start, settings, watch, writer, evaluator, checkpointer,
                      bookkeeping, make_error, workdir) -> list[Any]:
  """NaN guard, logs, progress bar, evaluation, preemption and checkpoints, in that order."""
  extra = None
  if plan.learning_rate is not None:
    extra = lambda step: {"learning_rate": float(plan.learning_rate(step - 1))}
  return [
      actions_lib.NanGuard(make_error, every=min(100, settings.log_every)),
      actions_lib.LogMetrics(writer, every=settings.log_every,
                             examples_per_step=plan.batch_size, extra=extra),
      actions_lib.Progress(name=plan.name, total_steps=plan.total_steps, start_step=start,
                           enabled=settings.progress_bar and contract.is_main()),
      evaluator,
      actions_lib.Preemption(watch, run=plan.name,
                             checkpoint_dir=workdir.checkpoint_dir(plan.name)),
      actions_lib.Checkpoint(checkpointer, every=settings.checkpoint_every,
                             host_state=runner.host_state, bookkeeping=bookkeeping,
                             make_error=make_error),
  ]


def _nonfinite(plan: RunPlan, workdir: Workdir, checkpointer) -> Callable[[int, str], Exception]:
  def make(step: int, what: str) -> Exception:
    checkpointer.wait()
    steps = checkpointer.all_steps()
    if steps:
      kept = (f"the last good checkpoint, step {steps[-1]}, is kept in "
              f"{os.path.join(workdir.checkpoint_dir(plan.name), str(steps[-1]))}")
    else:
      kept = "no checkpoint had been saved yet"
    bad_data = _non_finite_batch(plan, checkpointer, step)
    if bad_data:  # The data, not the optimisation, made the loss NaN.
      return NonFiniteLossError(
          f"run '{plan.name}': {what} at step {step} because {bad_data}; training stopped and "
          f"{kept}. Clean the data (or mask that example out with batch['mask']) and rerun",
          run=plan.name, step=step)
    return NonFiniteLossError(f"run '{plan.name}': {what} at step {step}; training stopped and "
                              f"{kept}. {plan.fix_hint}and run it in a new --workdir",
                              run=plan.name, step=step)
  return make


def _non_finite_batch(plan: RunPlan, checkpointer: Any, step: int) -> str:
  """Which entry of step ``step``'s batch is not finite, replayed from the data position of the
  last checkpoint before it ('' when the batch is finite or cannot be replayed).

  The training loop does not keep its batches (and checking each one would cost a pass over
  it every step), so a NaN found later is traced back here, once, when it stops a run.
  """
  try:
    start, position = 0, None
    for saved in reversed(checkpointer.all_steps()):
      if saved < step:
        start, position = saved, checkpointer.restore_data(saved).get("iterator")
        break
    batches = plan.data.train_iterator(seed=plan.seed, batch_size=plan.batch_size)
    try:
      if position is not None:
        batches.set_state(position)
      for _ in range(step - start - 1):
        next(batches)
      batch = next(batches)
    finally:
      batches.close()
  except Exception:  # pylint: disable=broad-except  # Only a diagnosis: keep the run's error.
    return ""
  return non_finite_entry(batch, step)


def non_finite_entry(batch: Mapping[str, Any], step: int) -> str:
  """'the batch of step S holds a non-finite value in batch[K], example I' or ''; examples
  that ``batch['mask']`` drops are not looked at."""
  mask = batch.get("mask")
  mask = None if mask is None else np.asarray(mask).astype(bool)
  for key in sorted(batch):
    if key == "mask":
      continue
    x = np.asarray(batch[key])
    if not np.issubdtype(x.dtype, np.floating) or x.ndim == 0:
      continue
    ok = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if mask is not None and mask.shape[:1] == ok.shape:
      ok |= ~mask.reshape(len(ok), -1).any(axis=1)
    if not ok.all():
      return (f"the batch of step {step} holds a non-finite value (NaN or inf) in "
              f"batch[{key!r}], example {int(np.flatnonzero(~ok)[0])}")
  return ""


def _step_fn(runner: Any, run: str, start: int, checked_steps: int,
             make_error: Callable[[int, str], Exception]) -> Callable:
  """``runner.step``, through :func:`kdjax.checked` for the first ``checked_steps`` steps this
  process runs (from ``start``); a checked step's failure becomes a run-level error naming the
  step."""
  step = start
  checked_runner = None

  def step_fn(state, batch):
    nonlocal step, checked_runner
    step += 1
    if step - start > checked_steps:
      return runner.step(state, batch)
    if checked_runner is None:
      checked_runner = runner.with_step_fn(_checked.checked(runner.step_fn))
    try:
      return checked_runner.step(state, batch)
    except _checked.NonFinite as e:
      raise make_error(step, e.detail) from None
    except _checked.CheckFailed as e:
      raise CheckFailed(e.detail, run=run, step=step) from None

  return step_fn

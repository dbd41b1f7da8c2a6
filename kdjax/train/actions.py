"""The periodic work of a run, as actions for :func:`kdjax.train.fit`.

Each action is called after every step with the step's :class:`~kdjax.train.loop.Loop` and acts
when it is due. The order a run uses (``kdjax.train.execute``): :class:`NanGuard`,
:class:`LogMetrics`, :class:`Progress`, :class:`Evaluate`, :class:`Preemption`,
:class:`Checkpoint` -- so a checkpoint never holds a NaN, keeps the evaluation of its own step
and is written before a preempted run stops.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from kdjax.train.errors import Preempted
from kdjax.train.loop import Loop, every

_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)])))


class NanGuard:
  """Raises ``make_error(step, what)`` when a loss becomes NaN or infinite.

  Losses stay on the device and are fetched together every ``every`` steps, at the last step
  and before any checkpoint (:meth:`flush`), so the guard costs no synchronisation per step.
  """

  def __init__(self, make_error: Callable[[int, str], Exception], *, every: int = 100):
    self.make_error = make_error
    self.every = max(1, int(every))
    self._pending: list[tuple[int, jax.Array]] = []

  def __call__(self, loop: Loop) -> None:
    self._pending.append((loop.step, loop.metrics["loss"]))
    if every(loop.step, self.every, last=loop.last):
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    values = jax.device_get([v for _, v in self._pending])
    steps = [s for s, _ in self._pending]
    self._pending = []
    for s, v in zip(steps, values):
      if not math.isfinite(float(v)):
        raise self.make_error(s, f"the loss became {float(v)}")


class LogMetrics:
  """Writes the step's metrics (plus throughput and ``extra(step)``) every ``every`` steps."""

  def __init__(self, writer: Any, *, every: int, examples_per_step: int, start_step: int,
               extra: Callable[[int], Mapping[str, float]] | None = None):
    self.writer = writer
    self.every = every
    self.examples_per_step = examples_per_step
    self.extra = extra
    self.last_record: dict[str, float] | None = None
    self._clock = (time.perf_counter(), start_step)

  def reset_clock(self, step: int) -> None:
    """Leaves the time since the last record (evaluation, checkpointing) out of the throughput."""
    self._clock = (time.perf_counter(), step)

  def __call__(self, loop: Loop) -> None:
    if not every(loop.step, self.every, last=loop.last):
      return
    metrics = jax.device_get(loop.metrics)
    now, (then, then_step) = time.perf_counter(), self._clock
    steps_per_s = (loop.step - then_step) / max(now - then, 1e-9)
    self._clock = (now, loop.step)
    record = {k: float(v) for k, v in metrics.items()}
    record.update(steps_per_s=steps_per_s, examples_per_s=steps_per_s * self.examples_per_step)
    if self.extra is not None:
      record.update(self.extra(loop.step))
    self.writer.write(loop.step, record)
    self.last_record = record


class Progress:
  """A tqdm progress bar (stderr) with the latest logged loss and throughput."""

  def __init__(self, *, name: str, total_steps: int, start_step: int,
               log: LogMetrics | None = None, enabled: bool = True):
    self.log = log
    self._bar = None
    if enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                       dynamic_ncols=True, mininterval=0.5, file=sys.stderr, leave=True)

  def __call__(self, loop: Loop) -> None:
    if self._bar is None:
      return
    record = self.log.last_record if self.log is not None else None
    if record is not None and self.log is not None and record is not getattr(self, "_shown", None):
      self._shown = record
      self._bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.1f}",
                            refresh=False)
    self._bar.update(loop.step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Evaluate:
  """Runs ``evaluate(state) -> {metric: float}`` every ``every`` steps and at the last step."""

  def __init__(self, evaluate: Callable[[Any], Mapping[str, Any]], writer: Any, *, every: int,
               log: LogMetrics | None = None):
    self.evaluate = evaluate
    self.writer = writer
    self.every = every
    self.log = log

  def __call__(self, loop: Loop) -> None:
    if not every(loop.step, self.every, last=loop.last):
      return
    loop.eval_metrics = dict(self.evaluate(loop.state))
    self.writer.write(loop.step, loop.eval_metrics, "eval")
    if self.log is not None:
      self.log.reset_clock(loop.step)


class Checkpoint:
  """Saves every ``every`` steps, after an evaluation, at the last step and when asked.

  Args:
    checkpointer: a :class:`~kdjax.train.checkpoint.Checkpointer`.
    host_state: placed state -> the state to save (``runner.host_state``).
    bookkeeping: ``() -> dict`` saved beside the state (data iterator position, elapsed time).
    guard: flushed before saving, so a checkpoint never holds a step past a NaN loss.
    make_error: ``(step, what) -> Exception`` for parameters that are no longer finite.
  """

  def __init__(self, checkpointer: Any, *, every: int, host_state: Callable[[Any], Any],
               bookkeeping: Callable[[], Mapping[str, Any]], guard: NanGuard | None,
               make_error: Callable[[int, str], Exception], log: LogMetrics | None = None):
    self.checkpointer = checkpointer
    self.every = every
    self.host_state = host_state
    self.bookkeeping = bookkeeping
    self.guard = guard
    self.make_error = make_error
    self.log = log

  def __call__(self, loop: Loop) -> None:
    due = (every(loop.step, self.every, last=loop.last) or loop.eval_metrics is not None or
           loop.save_requested)
    if not due:
      return
    if self.guard is not None:
      self.guard.flush()
    params = getattr(loop.state, "params", loop.state)
    if not bool(_all_finite(params)):
      raise self.make_error(loop.step, "the parameters became NaN or infinite")
    metrics = None
    if loop.eval_metrics is not None and "accuracy" in loop.eval_metrics:
      metrics = {"accuracy": float(loop.eval_metrics["accuracy"])}
    self.checkpointer.save(loop.step, self.host_state(loop.state), self.bookkeeping(), metrics)
    if loop.last or loop.stop is not None:
      self.checkpointer.wait()
    if self.log is not None:
      self.log.reset_clock(loop.step)


class PreemptionWatch:
  """Tells the loop when to save and stop: SIGTERM (a preemption notice) or SIGINT (Ctrl-C).

  One process: handlers set a flag that :class:`Preemption` reads after every step. Several
  processes: JAX's preemption service (started by ``jax.distributed.initialize``) catches
  SIGTERM and agrees on one step at which every process saves.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = self.SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.signum = signum

  def reached(self, step: int) -> bool:
    if self.signum is None and jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
    return self.signum is not None


class Preemption:
  """Asks for a checkpoint and stops the run with :class:`Preempted` once a signal arrived."""

  def __init__(self, watch: PreemptionWatch, *, run: str, checkpoint_dir: str):
    self.watch = watch
    self.run = run
    self.checkpoint_dir = checkpoint_dir

  def __call__(self, loop: Loop) -> None:
    if loop.last or not self.watch.reached(loop.step):
      return
    name = signal.Signals(self.watch.signum).name
    how = "was interrupted" if self.watch.signum == signal.SIGINT else "was preempted"
    loop.save_requested = True
    loop.stop = Preempted(
        f"run '{self.run}' {how} ({name}) at step {loop.step}; a checkpoint was saved in "
        f"{self.checkpoint_dir}/{loop.step}; run the same command again to resume",
        run=self.run, step=loop.step, signum=self.watch.signum)

"""The periodic work of a run, as actions for :func:`kdjax.train.fit`.

Each action is called after every step with the loop's record (:class:`~kdjax.train.loop.Loop`)
and acts when it is due (:class:`Periodic` owns that test); actions share nothing but that
record. The order a run uses (``kdjax.train.execute``): :class:`NanGuard`, :class:`LogMetrics`,
:class:`Progress`, :class:`Evaluate`, :class:`Preemption`, :class:`Checkpoint` -- so a
checkpoint never holds a NaN, keeps the evaluation of its own step and is written before a
preempted run stops.
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

from kdjax import workdir as contract
from kdjax.train.errors import Preempted
from kdjax.train.loop import Loop

_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)])))


class Periodic:
  """An action due every ``every`` steps (0: never) and, with ``at_last``, at the last step.

  Subclasses implement :meth:`run`; :meth:`due` is the one place the schedule is decided.
  """

  def __init__(self, *, every: int, at_last: bool = True):
    self.every = int(every)
    self.at_last = at_last

  def due(self, loop: Loop) -> bool:
    return (self.at_last and loop.last) or (self.every > 0 and loop.step % self.every == 0)

  def __call__(self, loop: Loop) -> None:
    if self.due(loop):
      self.run(loop)

  def run(self, loop: Loop) -> None:
    raise NotImplementedError


def check_losses(loop: Loop, make_error: Callable[[int, str], Exception]) -> None:
  """Fetches the losses ``loop.losses`` holds and raises ``make_error`` at the first non-finite."""
  if not loop.losses:
    return
  steps = [s for s, _ in loop.losses]
  values = jax.device_get([v for _, v in loop.losses])
  loop.losses = []
  for s, v in zip(steps, values):
    if not math.isfinite(float(v)):
      raise make_error(s, f"the loss became {float(v)}")


class NanGuard(Periodic):
  """Raises ``make_error(step, what)`` when a loss becomes NaN or infinite.

  Losses stay on the device (``loop.losses``) and are fetched together every ``every`` steps, at
  the last step and before any checkpoint (:class:`Checkpoint` checks them too), so the guard
  costs no synchronisation per step.
  """

  def __init__(self, make_error: Callable[[int, str], Exception], *, every: int = 100):
    super().__init__(every=max(1, int(every)))
    self.make_error = make_error

  def __call__(self, loop: Loop) -> None:
    loop.losses.append((loop.step, loop.metrics["loss"]))
    super().__call__(loop)

  def run(self, loop: Loop) -> None:
    check_losses(loop, self.make_error)


class LogMetrics(Periodic):
  """Writes the step's metrics (plus throughput and ``extra(step)``) every ``every`` steps."""

  def __init__(self, writer: Any, *, every: int, examples_per_step: int,
               extra: Callable[[int], Mapping[str, float]] | None = None):
    super().__init__(every=every)
    self.writer = writer
    self.examples_per_step = examples_per_step
    self.extra = extra

  def run(self, loop: Loop) -> None:
    metrics = jax.device_get(loop.metrics)
    now, (then, then_step) = time.perf_counter(), loop.clock
    steps_per_s = (loop.step - then_step) / max(now - then, 1e-9)
    loop.clock = (now, loop.step)
    record = {k: float(v) for k, v in metrics.items()}
    record.update(steps_per_s=steps_per_s, examples_per_s=steps_per_s * self.examples_per_step)
    if self.extra is not None:
      record.update(self.extra(loop.step))
    self.writer.write(loop.step, record)
    loop.last_record = record


class Progress:
  """A tqdm progress bar (stderr) with the latest logged loss and throughput."""

  def __init__(self, *, name: str, total_steps: int, start_step: int, enabled: bool = True):
    self._bar = None
    self._shown = None
    if enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                       dynamic_ncols=True, mininterval=0.5, file=sys.stderr, leave=True)

  def __call__(self, loop: Loop) -> None:
    if self._bar is None:
      return
    record = loop.last_record
    if record is not None and record is not self._shown:
      self._shown = record
      self._bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.1f}",
                            refresh=False)
    self._bar.update(loop.step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Evaluate(Periodic):
  """Runs ``evaluate(state) -> {metric: float}`` every ``every`` steps and at the last step.

  ``latest``: ``(step, metrics)`` of the latest evaluation, or ``None``.
  """

  def __init__(self, evaluate: Callable[[Any], Mapping[str, Any]], writer: Any, *, every: int):
    super().__init__(every=every)
    self.evaluate = evaluate
    self.writer = writer
    self.latest: tuple[int, dict[str, Any]] | None = None

  def run(self, loop: Loop) -> None:
    loop.eval_metrics = dict(self.evaluate(loop.state))
    self.latest = (loop.step, loop.eval_metrics)
    self.writer.write(loop.step, loop.eval_metrics, "eval")
    loop.restart_clock()


class Checkpoint(Periodic):
  """Saves every ``every`` steps, after an evaluation, at the last step and when asked.

  A checkpoint saved after an evaluation records its headline metric
  (:func:`kdjax.workdir.headline_metric`: ``miou``, ``map``, ``perplexity``... else
  ``accuracy``) for the best-checkpoint retention; one whose metric is missing or not finite
  records none and is kept only while it is among the latest.

  Args:
    checkpointer: a :class:`~kdjax.train.checkpoint.Checkpointer`.
    host_state: placed state -> the state to save (``runner.host_state``).
    bookkeeping: ``() -> dict`` saved beside the state (data iterator position, elapsed time).
    make_error: ``(step, what) -> Exception`` for a loss or parameters that are no longer
      finite: the losses not yet checked are checked before saving, so a checkpoint never
      holds a step past a NaN loss.
  """

  def __init__(self, checkpointer: Any, *, every: int, host_state: Callable[[Any], Any],
               bookkeeping: Callable[[], Mapping[str, Any]],
               make_error: Callable[[int, str], Exception]):
    super().__init__(every=every)
    self.checkpointer = checkpointer
    self.host_state = host_state
    self.bookkeeping = bookkeeping
    self.make_error = make_error

  def due(self, loop: Loop) -> bool:
    return super().due(loop) or loop.eval_metrics is not None or loop.save_requested

  def run(self, loop: Loop) -> None:
    check_losses(loop, self.make_error)
    params = getattr(loop.state, "params", loop.state)
    if not bool(_all_finite(params)):
      raise self.make_error(loop.step, "the parameters became NaN or infinite")
    self.checkpointer.save(loop.step, self.host_state(loop.state), self.bookkeeping(),
                           best_metric(loop.eval_metrics))
    if loop.last or loop.stop is not None:
      self.checkpointer.wait()
    loop.restart_clock()


def best_metric(eval_metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
  """``{name: value}`` of the evaluation's headline metric (:func:`kdjax.workdir.headline_metric`),
  what a checkpoint records for the best-checkpoint retention; ``None`` without an evaluation
  or when that metric is missing or not finite."""
  if eval_metrics is None:
    return None
  name = contract.headline_metric(eval_metrics)
  value = eval_metrics.get(name)
  if value is None or not math.isfinite(float(value)):
    return None
  return {name: float(value)}


class PreemptionWatch:
  """Tells the loop when to save and stop: SIGTERM (a preemption notice) or SIGINT (Ctrl-C).

  One process: handlers set a flag that :class:`Preemption` reads after every step. Several
  processes: JAX's preemption service (started by ``jax.distributed.initialize``) catches
  SIGTERM and agrees on one step at which every process saves.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._at_once = False
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

  def at_once(self) -> None:
    """From now on a signal stops at once: the run is already ending (an error is being
    reported, writers and checkpoints are being closed) and no checkpoint will be saved."""
    self._at_once = True

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None or self._at_once:
      # A second signal (Ctrl-C twice, or SIGTERM while a save is being waited for) stops at
      # once, without saving.
      raise KeyboardInterrupt
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

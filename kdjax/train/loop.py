"""``fit``: one training loop for every run, with the periodic work as composable actions.

``fit(state, step_fn, batches, total_steps=..., actions=[...])`` applies ``step_fn`` (any pure
``(state, batch) -> (state, metrics)``, usually a placed runner's ``step``) until
``total_steps`` and, after each step, calls every action with a :class:`Loop` describing it.
Actions (``kdjax.train.actions``) checkpoint, evaluate, log, guard against NaNs, react to
preemption and draw progress; their order in the list is the order they run in. This is the
shape of CLU's periodic actions, without its TensorFlow dependency.

Example::

  runner = kdjax.parallel.make_runner('jit')
  state = runner.put_state(state)
  state = kdjax.train.fit(state, runner.step, batches, total_steps=1000, actions=[
      actions.LogMetrics(writer, every=50),
      actions.Evaluate(lambda s: my_eval(s), writer, every=500),
  ])
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax


@dataclasses.dataclass
class Loop:
  """The record the actions share: what the step did, and what earlier actions left for later.

  ``fit`` keeps one record for the whole loop and updates it after each step; the per-step
  fields (``eval_metrics``, ``save_requested``, ``stop``) start empty at every step.

  Attributes:
    step: the number of updates applied so far (1 after the first step).
    total_steps: the step at which ``fit`` stops.
    state: the state after the step (as ``step_fn`` returned it, e.g. placed on devices).
    metrics: the step's metrics (device arrays; fetching them waits for the step).
    eval_metrics: set by an evaluation that ran at this step (host floats), for later actions
      (the checkpoint keeps the best one).
    save_requested: an action asks for a checkpoint now (preemption).
    stop: an exception an action wants ``fit`` to raise once every action has run.
    losses: ``[(step, loss)]`` still on the device, not yet checked for NaN / inf.
    last_record: the latest logged training record (host floats), for the progress bar.
    clock: ``(time, step)`` since when the throughput is measured; work between steps
      (evaluation, checkpointing) restarts it, so it is not counted as training time.
  """

  step: int
  total_steps: int
  state: Any
  metrics: Mapping[str, jax.Array]
  eval_metrics: dict[str, Any] | None = None
  save_requested: bool = False
  stop: BaseException | None = None
  losses: list[tuple[int, jax.Array]] = dataclasses.field(default_factory=list)
  last_record: dict[str, float] | None = None
  clock: tuple[float, int] = (0.0, 0)

  @property
  def last(self) -> bool:
    return self.step >= self.total_steps

  def restart_clock(self) -> None:
    self.clock = (time.perf_counter(), self.step)


class Action(Protocol):
  """Periodic work after a step: ``action(loop)``; ``close()`` when the loop ends, however."""

  def __call__(self, loop: Loop) -> None:
    ...


def fit(state: Any, step_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
        batches: Iterator[Any], *, total_steps: int, start_step: int = 0,
        actions: Sequence[Action] = ()) -> Any:
  """Runs ``step_fn`` from ``start_step`` to ``total_steps``, calling ``actions`` after each step.

  Args:
    state: the training state (already placed where ``step_fn`` expects it).
    step_fn: ``(state, batch) -> (state, metrics)``; ``metrics`` must hold ``loss`` for the
      NaN guard and the logs.
    batches: an iterator of batches (``next`` is called once per step).
    total_steps: the step to stop at.
    start_step: the step ``state`` is at (after a resume).
    actions: called in order after every step; each may have a ``close()`` method, called when
      the loop ends for any reason.

  Returns:
    The final state.

  Raises:
    Whatever an action sets as ``loop.stop`` (e.g. :class:`~kdjax.train.Preempted`), after all
    actions of that step have run; any error an action or the step raises.
  """
  if start_step > total_steps:
    raise ValueError(f"start_step={start_step} is past total_steps={total_steps}")
  loop = Loop(step=start_step, total_steps=total_steps, state=state, metrics={})
  loop.restart_clock()
  try:
    while loop.step < total_steps:
      state, metrics = step_fn(state, next(batches))
      loop.step += 1
      loop.state, loop.metrics = state, metrics
      loop.eval_metrics, loop.save_requested, loop.stop = None, False, None
      for action in actions:
        action(loop)
      if loop.stop is not None:
        raise loop.stop
  finally:
    for action in actions:
      close = getattr(action, "close", None)
      if close is not None:
        close()
  return state


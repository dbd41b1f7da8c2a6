"""The training engine: fit's loop and each action, with a tiny real step and real Orbax saves."""
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives
from kdjax import parallel
from kdjax import train
from kdjax.train import actions
from kdjax.train import checkpoint as ckpt_lib
from tests import helpers


def make_state(lr=0.1):
  return kdjax.DistillState.create(
      student=helpers.tap_mlp(0, hidden=8), teacher=None,
      objective=objectives.combine({"ce": objectives.cross_entropy()}),
      tx=optax.sgd(lr), rng=jax.random.key(0), example_batch=helpers.batch(8))


class Batches:
  """Deterministic batches with a resumable position."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return helpers.batch(8, seed=self.position)

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


class Recorder:
  def __init__(self, name, log):
    self.name, self.log, self.closed = name, log, False

  def __call__(self, loop):
    self.log.append((self.name, loop.step, loop.last))

  def close(self):
    self.closed = True


class Writer:
  def __init__(self):
    self.records = []

  def write(self, step, record, split="train"):
    self.records.append((step, split, dict(record)))


def test_fit_calls_actions_in_order_after_every_step_and_closes_them():
  log = []
  first, second = Recorder("a", log), Recorder("b", log)
  step = jax.jit(kdjax.distill_step)
  state = train.fit(make_state(), step, Batches(), total_steps=3, start_step=0,
                    actions=[first, second])
  assert int(state.step) == 3
  assert log == [("a", 1, False), ("b", 1, False), ("a", 2, False), ("b", 2, False),
                 ("a", 3, True), ("b", 3, True)]
  assert first.closed and second.closed


def test_fit_resumes_from_start_step_and_raises_what_an_action_asks_for():
  log = []

  class Stop:
    def __call__(self, loop):
      if loop.step == 4:
        loop.stop = RuntimeError("stop at 4")

  recorder = Recorder("r", log)
  with pytest.raises(RuntimeError, match="stop at 4"):
    train.fit(make_state(), jax.jit(kdjax.distill_step), Batches(), total_steps=10,
              start_step=2, actions=[Stop(), recorder])
  assert [s for _, s, _ in log] == [3, 4]  # Every action of step 4 ran before the stop.
  assert recorder.closed
  with pytest.raises(ValueError, match="past total_steps"):
    train.fit(make_state(), kdjax.distill_step, Batches(), total_steps=2, start_step=3)


def test_log_metrics_and_evaluate_are_periodic_and_run_at_the_last_step():
  writer = Writer()
  log = actions.LogMetrics(writer, every=2, examples_per_step=8,
                           extra=lambda s: {"learning_rate": 0.1 * s})
  evaluations = []
  evaluate = actions.Evaluate(lambda state: evaluations.append(int(state.step)) or
                              {"accuracy": 0.5}, writer, every=3)
  train.fit(make_state(), jax.jit(kdjax.distill_step), Batches(), total_steps=5,
            actions=[log, evaluate])
  train_steps = [s for s, split, _ in writer.records if split == "train"]
  assert train_steps == [2, 4, 5]
  assert evaluations == [3, 5]
  record = next(r for s, split, r in writer.records if split == "train" and s == 4)
  assert record["learning_rate"] == pytest.approx(0.4)
  assert {"loss", "ce", "accuracy", "steps_per_s", "examples_per_s"} <= set(record)


def test_nan_guard_raises_at_the_step_that_diverged():
  errors = []

  def make_error(step, what):
    errors.append(step)
    return FloatingPointError(f"step {step}: {what}")

  guard = actions.NanGuard(make_error, every=100)
  state = make_state(lr=1e30)
  with pytest.raises(FloatingPointError) as caught:
    train.fit(state, jax.jit(kdjax.distill_step), Batches(), total_steps=30, actions=[guard])
  step = errors[0]
  assert 1 < step <= 30 and f"step {step}" in str(caught.value)
  # Steps before it were finite: the guard reports the first non-finite loss, not the last.
  assert "nan" in str(caught.value) or "inf" in str(caught.value)


def test_checkpoint_action_saves_periodically_and_resume_continues_exactly(tmp_path):
  runner = parallel.make_runner("jit")
  directory = tmp_path / "ckpt"

  def run(total, *, stop_after=None):
    batches = Batches()
    checkpointer = ckpt_lib.Checkpointer(directory, keep=3)
    placed = runner.put_state(make_state())
    start = 0
    restored = checkpointer.restore_latest(runner.host_state(placed))
    if restored is not None:
      host, data, start = restored
      placed = runner.put_state(host)
      batches.set_state(data["iterator"])
    losses = {}

    class Record:
      def __call__(self, loop):
        losses[loop.step] = float(loop.metrics["loss"])
        if loop.step == stop_after:
          loop.stop = KeyboardInterrupt()

    save = actions.Checkpoint(checkpointer, every=2, host_state=runner.host_state,
                              bookkeeping=lambda: {"iterator": batches.get_state()},
                              make_error=lambda s, w: RuntimeError(w))
    try:
      train.fit(placed, runner.step, batches, total_steps=total, start_step=start,
                actions=[Record(), save])
    except KeyboardInterrupt:
      pass
    finally:
      checkpointer.close()
    return losses

  uninterrupted = run(6)
  for name in os.listdir(directory):
    (directory / name).rename(tmp_path / f"first-{name}")
  first = run(6, stop_after=3)  # Saved at step 2; step 3 is lost, as after a kill.
  second = run(6)
  assert sorted(first) == [1, 2, 3] and sorted(second) == [3, 4, 5, 6]
  for step in range(1, 7):
    got = first.get(step) if step < 3 else second[step]
    assert got == pytest.approx(uninterrupted[step], rel=1e-6), step


def test_preemption_action_asks_for_a_save_and_stops_with_the_signal():
  watch = actions.PreemptionWatch()
  stop = actions.Preemption(watch, run="student", checkpoint_dir="/tmp/x")
  seen = []

  class Save:
    def __call__(self, loop):
      seen.append((loop.step, loop.save_requested))

  with watch:
    with pytest.raises(train.Preempted) as caught:
      def step_fn(state, batch):
        if int(state.step) == 2:
          os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: handled like a preemption notice.
        return kdjax.distill_step(state, batch)
      train.fit(make_state(), step_fn, Batches(), total_steps=10, actions=[stop, Save()])
  assert caught.value.signum == signal.SIGINT and caught.value.step == 3
  assert "interrupted (SIGINT) at step 3" in str(caught.value)
  assert seen[-1] == (3, True) and all(not requested for _, requested in seen[:-1])
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_writers_truncate_records_of_an_interrupted_attempt(tmp_path):
  run_dir = str(tmp_path / "run")
  writer = train.make_writer(run_dir, run="run", start_step=0, enabled=True, tensorboard=False)
  for step in (1, 2, 3, 4):
    writer.write(step, {"loss": step * 0.5})
  writer.write(4, {"accuracy": 0.25}, "eval")
  writer.close()
  resumed = train.make_writer(run_dir, run="run", start_step=2, enabled=True, tensorboard=False)
  resumed.write(3, {"loss": math.nan})
  resumed.close()
  records = train.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  assert records == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 1.0},
                     {"step": 3, "loss": "nan"}]
  assert np.isclose(records[1]["loss"], 1.0)

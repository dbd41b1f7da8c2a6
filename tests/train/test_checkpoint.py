"""Checkpointer: retention (latest N and the best), exact round trip, damaged checkpoints."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax
import kdjax
from kdjax import _checkpointable
from kdjax import objectives
from kdjax import strategies
from kdjax.train import actions
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import loop as loop_lib
from kdjax.train.errors import CheckpointError
from tests import helpers


def make_state(seed=0):
  return kdjax.DistillState.create(
      student=helpers.tap_mlp(seed, hidden=8), teacher=helpers.tap_mlp(9, hidden=16),
      objective=objectives.combine({"kd": objectives.kd()}),
      tx=optax.sgd(0.1, momentum=0.9), rng=jax.random.key(seed),
      example_batch=helpers.batch(8))


def bumped(state, step):
  return state.replace(step=jnp.asarray(step, jnp.int32),
                       params=jax.tree.map(lambda p: p + step, state.params),
                       rng=jax.random.fold_in(state.rng, step))


def steps_on_disk(directory):
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def test_round_trip_restores_everything_but_the_teacher(tmp_path):
  state = make_state()
  saved = bumped(state, 3)
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2)
  checkpointer.save(3, saved, {"iterator": {"step": 3}, "elapsed_s": 1.5})
  checkpointer.wait()
  restored, data, step = checkpointer.restore_latest(make_state())
  assert step == 3 and data == {"iterator": {"step": 3}, "elapsed_s": 1.5}
  fields = _checkpointable.checkpoint_fields(saved)
  assert fields == ("step", "params", "student_state", "objective_state", "opt_state", "rng")
  for field in fields:
    if field == "rng":
      np.testing.assert_array_equal(jax.random.key_data(restored.rng),
                                    jax.random.key_data(saved.rng))
    else:
      jax.tree.map(np.testing.assert_array_equal, getattr(restored, field), getattr(saved, field))
  # The teacher is not in the checkpoint: the target's teacher is kept as it is.
  assert restored.teacher_params is not None
  assert not any("teacher" in name for name in os.listdir(tmp_path / "ckpt" / "3" / "state"))
  checkpointer.close()


@flax.struct.dataclass
class _StateWithEma(kdjax.DistillState):
  ema_params: object = None


def test_a_new_state_field_is_checkpointed_without_any_list_to_update(tmp_path):
  base = make_state()
  state = _StateWithEma(**{f: getattr(base, f) for f in base.__dataclass_fields__},
                        ema_params=jax.tree.map(lambda p: p * 0 + 7.0, base.params))
  assert "ema_params" in _checkpointable.checkpoint_fields(state)
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1)
  checkpointer.save(1, state, {})
  checkpointer.wait()
  target = state.replace(ema_params=jax.tree.map(jnp.zeros_like, state.ema_params))
  restored, _, _ = checkpointer.restore_latest(target)
  jax.tree.map(np.testing.assert_array_equal, restored.ema_params, state.ema_params)
  checkpointer.close()


def test_mutual_state_round_trips(tmp_path):
  students = [helpers.tap_mlp(1, hidden=8), helpers.tap_mlp(2, hidden=4)]
  state = strategies.MutualState.create(students, optax.adam(1e-3), jax.random.key(0),
                                        helpers.batch(8))
  saved = state.replace(step=jnp.asarray(5, jnp.int32),
                        params=jax.tree.map(lambda p: p + 1.0, state.params))
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1)
  checkpointer.save(5, saved, {})
  checkpointer.wait()
  restored, _, step = checkpointer.restore_latest(state)
  assert step == 5 and int(restored.step) == 5
  jax.tree.map(np.testing.assert_array_equal, restored.params, saved.params)
  checkpointer.close()


def test_keeps_the_latest_and_the_best(tmp_path):
  state = make_state()
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2)
  accuracy = {2: 0.9, 4: 0.5, 6: 0.6}
  for step in range(1, 8):
    metrics = {"accuracy": accuracy[step]} if step in accuracy else None
    checkpointer.save(step, bumped(state, step), {}, metrics)
  checkpointer.wait()
  # Latest two (6, 7) plus the best evaluated one (2, accuracy 0.9).
  assert steps_on_disk(tmp_path / "ckpt") == [2, 6, 7]
  checkpointer.close()


# The step each metric's retention must keep among evaluations {2: 0.9, 4: 0.5, 6: 0.6}: the
# highest value, or the lowest where lower is better (perplexity, bits per byte).
_BEST_STEP = {"perplexity": 4, "bits_per_byte": 4, "miou": 2, "map": 2}


@pytest.mark.parametrize("metric", sorted(_BEST_STEP))
def test_the_best_is_chosen_in_the_direction_of_its_metric(tmp_path, metric):
  state = make_state()
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2)
  value = {2: 0.9, 4: 0.5, 6: 0.6}
  for step in range(1, 8):
    metrics = {metric: value[step]} if step in value else None
    checkpointer.save(step, bumped(state, step), {}, metrics)
  checkpointer.wait()
  assert steps_on_disk(tmp_path / "ckpt") == sorted({_BEST_STEP[metric], 6, 7})
  checkpointer.close()


def test_a_checkpoint_records_one_finite_metric(tmp_path):
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1)
  with pytest.raises(ValueError, match="one finite metric"):
    checkpointer.save(1, make_state(), {}, {"miou": 0.5, "accuracy": 0.9})
  with pytest.raises(ValueError, match="one finite metric"):
    checkpointer.save(1, make_state(), {}, {"perplexity": float("nan")})
  assert steps_on_disk(tmp_path / "ckpt") == []
  checkpointer.close()


@pytest.mark.parametrize("evaluation, recorded", [
    ({"accuracy": 0.8, "top5": 0.9, "ece": 0.1}, {"accuracy": 0.8}),
    ({"miou": 0.4, "accuracy": 0.9}, {"miou": 0.4}),  # segmentation: not pixel accuracy
    ({"map50": 0.7, "map": 0.3}, {"map": 0.3}),  # detection
    ({"perplexity": 12.5, "bits_per_byte": 1.5, "nll": 2.5, "accuracy": 0.4, "count": 64},
     {"perplexity": 12.5}),  # a language model: not next-token accuracy
    ({"miou": float("nan"), "accuracy": 0.9}, None),
    ({"loss": 1.0}, None),
    (None, None),
])
def test_a_checkpoint_after_an_evaluation_records_its_headline_metric(evaluation, recorded):
  assert actions.best_metric(evaluation) == recorded


def _save_with_action(checkpointer, state, evaluations, steps):
  """Runs the loop's checkpoint action at each of ``steps``, with ``evaluations[step]`` as the
  evaluation of that step (none where absent)."""
  save = actions.Checkpoint(checkpointer, every=1, host_state=lambda s: s,
                            bookkeeping=lambda: {}, make_error=lambda s, w: RuntimeError(w))
  for step in steps:
    loop = loop_lib.Loop(step=step, total_steps=steps[-1], state=bumped(state, step), metrics={},
                         eval_metrics=evaluations.get(step))
    assert save.due(loop)
    save.run(loop)


def test_the_checkpoint_action_keeps_the_lowest_perplexity_across_a_resume(tmp_path):
  state = make_state()
  # Next-token accuracy and perplexity disagree: step 2 has the lowest perplexity, step 6 the
  # highest accuracy.
  evaluations = {2: {"perplexity": 20.0, "accuracy": 0.2},
                 4: {"perplexity": 40.0, "accuracy": 0.6},
                 6: {"perplexity": 35.0, "accuracy": 0.7},
                 8: {"perplexity": 25.0, "accuracy": 0.9}}
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
  _save_with_action(checkpointer, state, evaluations, list(range(1, 8)))
  checkpointer.close()
  assert steps_on_disk(tmp_path / "ckpt") == [2, 7]
  # A resumed run reads the recorded metrics back: step 8 (perplexity 25) does not beat step 2.
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
  _save_with_action(checkpointer, state, evaluations, [8, 9])
  checkpointer.close()
  assert steps_on_disk(tmp_path / "ckpt") == [2, 9]


def test_the_checkpoint_action_keeps_the_best_miou_not_pixel_accuracy(tmp_path):
  state = make_state()
  evaluations = {1: {"miou": 0.6, "accuracy": 0.7}, 2: {"miou": 0.3, "accuracy": 0.95}}
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
  _save_with_action(checkpointer, state, evaluations, [1, 2, 3])
  checkpointer.close()
  assert steps_on_disk(tmp_path / "ckpt") == [1, 3]


def test_incomplete_save_is_ignored_with_a_warning(tmp_path, caplog):
  state = make_state()
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=3)
  checkpointer.save(1, bumped(state, 1), {})
  checkpointer.close()
  partial = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  with caplog.at_level("WARNING"):
    checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=3)
  assert any("incomplete checkpoint" in r.getMessage() for r in caplog.records)
  _, _, step = checkpointer.restore_latest(make_state())
  assert step == 1
  checkpointer.close()


def test_all_checkpoints_unreadable_is_an_error_that_moves_nothing(tmp_path):
  state = make_state()
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=3)
  for step in (1, 2):
    checkpointer.save(step, bumped(state, step), {})
  checkpointer.close()
  for step in (1, 2):
    os.remove(tmp_path / "ckpt" / str(step) / "state" / "_METADATA")
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=3)
  with pytest.raises(CheckpointError, match="none of the checkpoints .* new --workdir"):
    checkpointer.restore_latest(make_state())
  assert steps_on_disk(tmp_path / "ckpt") == [1, 2]
  checkpointer.close()


def test_find_checkpoint_accepts_run_checkpoints_or_step_dirs(tmp_path):
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", keep=3)
  for step in (5, 10):
    checkpointer.save(step, bumped(make_state(), step), {})
  checkpointer.close()
  want = tmp_path / "run" / "checkpoints" / "10"
  for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", want):
    assert str(ckpt_lib.find_checkpoint(path)) == str(want)
  assert str(ckpt_lib.find_checkpoint(tmp_path / "run" / "checkpoints" / "5")).endswith("/5")

"""A teacher that reads another batch entry than its student (``teacher_input_key``), and the
degraded view the data pipeline makes for such a student."""
import chex
import jax
import numpy as np
import optax
import pytest

import kdjax
from kdjax import data, losses, models, objectives, parallel
from tests import helpers

B, D, C = 8, 6, 4


def _linear(seed):
  w = np.random.default_rng(seed).normal(size=(D, C)).astype(np.float32)
  return models.from_apply_fn(lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], {"w": w})


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(B, D)).astype(np.float32),
          "full": rng.normal(size=(B, D)).astype(np.float32),
          "label": rng.integers(0, C, size=(B,)).astype(np.int32)}


def _state(**keys):
  return kdjax.DistillState.create(
      student=_linear(0), teacher=_linear(1), objective=objectives.from_loss(losses.kd),
      tx=optax.sgd(0.1), rng=jax.random.key(0), example_batch=_batch(), **keys)


def _np_kd(s, t):
  """T = 1 KL(softmax(t) || softmax(s)) per example, written out in numpy."""
  log_ps = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(
      -1, keepdims=True)
  log_pt = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(
      -1, keepdims=True)
  return (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)


def test_the_teacher_reads_its_own_entry():
  state = _state(teacher_input_key="full")
  assert state.teacher_key == "full"
  batch = _batch()
  w_s, w_t = np.asarray(_linear(0).params["w"]), np.asarray(_linear(1).params["w"])
  _, metrics = jax.jit(kdjax.distill_step)(state, batch)
  want = _np_kd(batch["image"] @ w_s, batch["full"] @ w_t).mean()
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  out = jax.jit(kdjax.eval_step)(state, batch)
  np.testing.assert_array_equal(out["teacher_prediction"],
                                np.argmax(batch["full"] @ w_t, axis=-1))
  # Changing the student's input changes the student, never the teacher's outputs.
  other = {**batch, "image": _batch(5)["image"]}
  np.testing.assert_array_equal(jax.jit(kdjax.eval_step)(state, other)["teacher_prediction"],
                                out["teacher_prediction"])
  assert not np.array_equal(jax.jit(kdjax.eval_step)(state, other)["prediction"],
                            out["prediction"])


def test_by_default_the_teacher_reads_the_students_entry():
  default, same = _state(), _state(teacher_input_key="image")
  assert default.teacher_input_key is None and default.teacher_key == "image"
  batch = _batch()
  chex.assert_trees_all_equal(jax.jit(kdjax.distill_step)(default, batch)[1],
             jax.jit(kdjax.distill_step)(same, batch)[1])
  w_s, w_t = np.asarray(_linear(0).params["w"]), np.asarray(_linear(1).params["w"])
  np.testing.assert_allclose(jax.jit(kdjax.distill_step)(default, batch)[1]["loss"],
                             _np_kd(batch["image"] @ w_s, batch["image"] @ w_t).mean(), rtol=1e-5)


def test_a_missing_teacher_entry_is_refused_by_name():
  with pytest.raises(ValueError, match="no 'nope' entry for the teacher.*teacher.input_key"):
    _state(teacher_input_key="nope")
  state = _state(teacher_input_key="full")
  batch = _batch()
  del batch["full"]
  with pytest.raises(ValueError, match="no 'full' entry for the teacher"):
    kdjax.distill_step(state, batch)


def test_one_mesh_runner_step_with_two_input_keys():
  state = _state(teacher_input_key="full")
  batch = _batch()
  want_state, want = jax.jit(kdjax.distill_step)(state, batch)
  runner = parallel.MeshRunner(parallel.make_mesh({"data": -1}))
  got_state, got = runner.step(runner.put_state(_state(teacher_input_key="full")), batch)
  # Both entries are split over the data axis like every batch entry.
  assert len(runner.put_batch(batch)["full"].sharding.device_set) == jax.device_count()
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  np.testing.assert_allclose(got_state.params["student"]["w"], want_state.params["student"]["w"],
                             rtol=1e-5, atol=1e-6)


def _block_means(images, f):
  """Each f x f block replaced by its mean, by explicit loops."""
  out = np.empty_like(images)
  for y in range(0, images.shape[1], f):
    for x in range(0, images.shape[2], f):
      out[:, y:y + f, x:x + f] = images[:, y:y + f, x:x + f].mean(axis=(1, 2), keepdims=True)
  return out


def test_the_degraded_view_is_made_from_the_same_augmented_example():
  kwargs = dict(global_batch_size=16, seed=3, augment={"crop_padding": 1, "flip": True})
  batch = next(data.make_train_iterator("digits", degrade={"downsample": 2}, **kwargs))
  plain = next(data.make_train_iterator("digits", **kwargs))
  np.testing.assert_array_equal(batch["image"], plain["image"])  # The full view is unchanged.
  assert data.DEGRADED_KEY not in plain
  np.testing.assert_allclose(batch[data.DEGRADED_KEY], _block_means(batch["image"], 2),
                             rtol=1e-6, atol=1e-6)


def test_masked_views_are_aligned_deterministic_and_replayable():
  degrade = {"mask_fraction": 0.5}
  kwargs = dict(global_batch_size=16, seed=3, degrade=degrade)
  a = next(data.make_train_iterator("digits", **kwargs))
  b = next(data.make_train_iterator("digits", **kwargs))
  np.testing.assert_array_equal(a[data.DEGRADED_KEY], b[data.DEGRADED_KEY])
  kept = a[data.DEGRADED_KEY] != 0
  np.testing.assert_array_equal(a[data.DEGRADED_KEY][kept], a["image"][kept])
  dropped = (a[data.DEGRADED_KEY] == 0) & (a["image"] != 0)
  assert 0.3 < dropped.sum() / (a["image"] != 0).sum() < 0.7
  # Under replay the view of (example, replay epoch) is the one the replayed stream shows.
  stream = next(data.make_train_iterator("digits", replay_epochs=2, **kwargs))
  views = data.make_replay_views("digits", seed=3, replay_epochs=2, degrade=degrade)
  again = views(stream["index"], stream["replay_epoch"])
  np.testing.assert_array_equal(again[data.DEGRADED_KEY], stream[data.DEGRADED_KEY])
  assert views.settings["degrade"] == {"downsample": 1, "mask_fraction": 0.5}
  evals = [next(iter(data.make_eval_batches("digits", batch_size=32, degrade=degrade)))
           for _ in range(2)]
  np.testing.assert_array_equal(evals[0][data.DEGRADED_KEY], evals[1][data.DEGRADED_KEY])


def test_bad_degrade_options_are_refused():
  with pytest.raises(data.DataError, match="downsample=3 does not divide"):
    next(data.make_train_iterator("digits", global_batch_size=4, seed=0,
                                  degrade={"downsample": 3}))
  with pytest.raises(data.DataError, match="mask_fraction must be in"):
    data.DegradeOptions(mask_fraction=1.0)
  with pytest.raises(data.DataError, match="unknown degrade option"):
    data.make_eval_batches("digits", batch_size=4, degrade={"blur": 1})


def _tiny_cross_view(**overrides):
  from tests.train import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config()
  config.total_steps = 2
  config.teacher.total_steps = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.data.degrade.downsample = 2
  config.data.degrade.mask_fraction = 0.25
  config.student.input_key = data.DEGRADED_KEY
  return helpers.with_overrides(config, overrides)


def test_a_config_key_that_names_no_batch_entry_fails_before_any_work(tmp_path):
  from kdjax import train  # pylint: disable=g-import-not-at-top
  with pytest.raises(train.ConfigError,
                     match=r"run 'teacher': the batch has no 'imag' entry.*\.input_key"):
    train.train_and_evaluate(_tiny_cross_view(**{"teacher.input_key": "imag"}),
                             str(tmp_path / "w"))
  assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.slow  # Three runs of two steps, and a teacher cache, through the run layer.
def test_the_run_layer_gives_each_model_its_view(tmp_path):
  from kdjax import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(_tiny_cross_view(), str(tmp_path / "online"))
  assert list(results) == ["teacher", "student", "student_kd"]
  assert 0 <= results["student_kd"]["accuracy"] <= 1
  cached = train.train_and_evaluate(
      _tiny_cross_view(**{"teacher_cache.enabled": True, "teacher_cache.replay_epochs": 1}),
      str(tmp_path / "cached"))
  assert cached["teacher"]["accuracy"] == results["teacher"]["accuracy"]
  assert 0 <= cached["student_kd"]["accuracy"] <= 1


def test_the_teacher_cache_is_built_from_the_teachers_entry(tmp_path):
  from kdjax import teacher_cache  # pylint: disable=g-import-not-at-top
  teacher = models.from_apply_fn(
      lambda p, x: x.reshape(x.shape[0], -1) @ p["w"],
      {"w": np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)})
  views = data.make_replay_views("digits", seed=0, replay_epochs=1,
                                 degrade={"downsample": 2})
  index = np.arange(views.num_examples)
  batch = views(index, np.zeros_like(index))
  for key in ("image", data.DEGRADED_KEY):
    cache = teacher_cache.build_teacher_cache(tmp_path / key, teacher, views, values_dtype="float32",
                                              input_key=key, batch_size=512)
    want = batch[key].reshape(len(index), -1) @ np.asarray(teacher.params["w"])
    np.testing.assert_allclose(cache.values[0], want, rtol=1e-5, atol=1e-5)
  with pytest.raises(teacher_cache.TeacherCacheError, match="no 'nope' entry"):
    teacher_cache.build_teacher_cache(tmp_path / "x", teacher, views, input_key="nope")

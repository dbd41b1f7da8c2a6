"""Teacher cache: augmentation replay, build / resume / staleness, and the cached KD term."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

import kdjax
from kdjax import data, objectives, teacher_cache
from kdjax.models import Outputs
from tests import helpers

SHAPE = (4, 4, 3)
N = 36
CLASSES = 5
AUGMENT = {"crop_padding": 1, "flip": True}


def dataset():
  return data.SyntheticDataset(SHAPE, num_classes=CLASSES, num_train=N, num_eval=8, seed=3)


def teacher(seed=0):
  return helpers.tap_mlp(seed, hidden=16, num_classes=CLASSES, in_dim=int(np.prod(SHAPE)))


def views(replay_epochs=2, seed=7, **kw):
  return data.make_replay_views(dataset(), seed=seed, replay_epochs=replay_epochs,
                                augment=AUGMENT, **kw)


def build(directory, model, **kw):
  kw = {"k": 3, "batch_size": 8, "chunk_size": 8, "values_dtype": "float32", **kw}
  return teacher_cache.build_teacher_cache(directory, model, kw.pop("views", None) or views(),
                                           **kw)


# Augmentation replay ----------------------------------------------------------------------------


def test_replay_views_depend_on_seed_epoch_mod_e_and_index():
  it = data.make_train_iterator(dataset(), global_batch_size=12, seed=7, augment=AUGMENT,
                                replay_epochs=2)
  plain = data.make_train_iterator(dataset(), global_batch_size=12, seed=7, augment=AUGMENT)
  v = views()
  seen = {}
  for step in range(3 * N // 12):  # three epochs
    batch, ref = next(it), next(plain)
    np.testing.assert_array_equal(batch["index"], ref["index"])  # same data order
    epoch = (step * 12 + np.arange(12)) // N
    np.testing.assert_array_equal(batch["replay_epoch"], epoch % 2)
    again = v(batch["index"], batch["replay_epoch"])
    np.testing.assert_array_equal(batch["image"], again["image"])
    np.testing.assert_array_equal(batch["label"], again["label"])
    for row, (i, e) in enumerate(zip(batch["index"], epoch)):
      seen[(int(i), int(e))] = batch["image"][row]
  for i in range(N):  # epoch 2 replays epoch 0; epoch 1 is another view
    np.testing.assert_array_equal(seen[(i, 0)], seen[(i, 2)])
  assert sum(not np.array_equal(seen[(i, 0)], seen[(i, 1)]) for i in range(N)) > N // 2
  other_seed = data.make_replay_views(dataset(), seed=8, replay_epochs=2, augment=AUGMENT)
  idx = np.arange(N)
  assert not np.array_equal(v(idx, 0)["image"], other_seed(idx, 0)["image"])


def test_replay_state_and_bad_options():
  it = data.make_train_iterator(dataset(), global_batch_size=12, seed=7, replay_epochs=2)
  next(it)
  state = it.get_state()
  assert state["replay_epochs"] == 2
  plain = data.make_train_iterator(dataset(), global_batch_size=12, seed=7)
  with pytest.raises(data.DataError, match="replay_epochs"):
    plain.set_state(state)
  with pytest.raises(data.DataError, match="replay_epochs"):
    it.set_state(plain.get_state())
  with pytest.raises(data.DataError, match="cannot be replayed"):
    data.make_train_iterator(dataset(), global_batch_size=12, seed=7, replay_epochs=2,
                             augment={"mixup_alpha": 0.2})
  with pytest.raises(data.DataError, match="replay_epochs must be"):
    data.make_replay_views(dataset(), seed=0, replay_epochs=0)


# Build, resume, staleness -----------------------------------------------------------------------


def direct_topk(model, v, k):
  """The teacher's top-k on every replayed view, computed here without the cache."""
  out = []
  for r in range(v.replay_epochs):
    images = v(np.arange(N), np.full((N,), r))["image"]
    logits = np.asarray(model.apply(model.params, model.model_state, images, train=False,
                                    rng=None)[0].logits)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    out.append((np.take_along_axis(logits, order, -1), order))
  return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def test_build_matches_teacher_and_resume_equals_uninterrupted(tmp_path):
  model = teacher()
  full_run = build(tmp_path / "full", model)
  values, indices = direct_topk(model, views(), 3)
  assert full_run.values.shape == (2, N, 3) and full_run.indices.dtype == np.int16
  np.testing.assert_allclose(full_run.values, values, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(full_run.indices, indices)

  class Stop(Exception):
    pass

  def stop_after_3(done, total):
    if done == 3:
      raise Stop

  with pytest.raises(Stop):
    build(tmp_path / "resumed", model, on_chunk=stop_after_3)
  units = os.listdir(tmp_path / "resumed" / "units")
  assert len([u for u in units if u.endswith("values.npy")]) == 3
  calls = []
  resumed = build(tmp_path / "resumed", model, on_chunk=lambda d, t: calls.append((d, t)))
  assert [d for d, _ in calls] == [4, 5, 6, 7, 8, 9, 10]  # 2 epochs x 5 chunks; 3 were done
  np.testing.assert_array_equal(resumed.values, full_run.values)
  np.testing.assert_array_equal(resumed.indices, full_run.indices)
  assert not (tmp_path / "resumed" / "units").exists()
  calls.clear()  # A complete cache is reused as it is.
  build(tmp_path / "resumed", model, on_chunk=lambda d, t: calls.append(d))
  assert calls == []


def test_sharded_build_over_processes(tmp_path):
  model = teacher()
  single = build(tmp_path / "one", model)
  with pytest.raises(teacher_cache.TeacherCacheError, match="missing"):
    build(tmp_path / "two", model, process_index=0, process_count=2)  # process 1 not done yet
  with pytest.raises(teacher_cache.TeacherCacheError, match="no complete"):
    build(tmp_path / "two", model, process_index=1, process_count=2)  # writes its units
  calls = []
  both = build(tmp_path / "two", model, process_index=0, process_count=2,
               on_chunk=lambda d, t: calls.append(d))
  assert calls == []  # process 0's units were written by its first run
  np.testing.assert_array_equal(both.values, single.values)
  np.testing.assert_array_equal(both.indices, single.indices)


def test_stale_cache_is_rebuilt_or_refused(tmp_path):
  model = teacher()
  old = build(tmp_path, model)
  old_values, old_fp = np.array(old.values), old.fingerprint
  changed = dataclasses.replace(model, params=jax.tree.map(lambda p: p + 0.01, model.params))
  with pytest.raises(teacher_cache.TeacherCacheError, match="another teacher"):
    build(tmp_path, changed, on_stale="error")
  with pytest.raises(teacher_cache.TeacherCacheError, match="another teacher"):
    teacher_cache.load_teacher_cache(tmp_path, fingerprint="0" * 64)
  new = build(tmp_path, changed)
  assert new.fingerprint != old_fp
  assert not np.allclose(np.asarray(new.values), old_values)
  np.testing.assert_allclose(new.values, direct_topk(changed, views(), 3)[0], rtol=1e-5,
                             atol=1e-5)
  # Other settings (k, the views' seed) are stale too.
  assert build(tmp_path, changed, k=2).k == 2
  assert build(tmp_path, changed, views=views(seed=8)).meta["views"]["seed"] == 8


def test_corrupt_cache_is_refused(tmp_path):
  cache = build(tmp_path, teacher())
  np.save(tmp_path / "values.npy", np.zeros((2, N, 4), np.float32))
  with pytest.raises(teacher_cache.TeacherCacheError, match="does not match its metadata"):
    teacher_cache.load_teacher_cache(tmp_path, fingerprint=cache.fingerprint)
  meta = json.loads((tmp_path / "meta.json").read_text())
  (tmp_path / "meta.json").write_text(json.dumps({**meta, "complete": False}))
  with pytest.raises(teacher_cache.TeacherCacheError, match="no complete"):
    teacher_cache.load_teacher_cache(tmp_path)


def test_full_cache_low_precision_and_bad_args(tmp_path):
  model = teacher()
  cache = build(tmp_path / "a", model, k=None, values_dtype="bfloat16")
  assert cache.full and cache.values.dtype == jnp.bfloat16 and cache.values.shape == (2, N, 5)
  v = views()
  logits = model.apply(model.params, model.model_state, v(np.arange(N), np.zeros(N, int))["image"],
                       train=False, rng=None)[0].logits
  np.testing.assert_allclose(np.asarray(cache.values[0], np.float32), logits, rtol=1e-2,
                             atol=1e-2)
  looked = cache.lookup(np.array([3, 5]), np.array([0, 1]))
  np.testing.assert_array_equal(looked[objectives.TOPK_INDICES_KEY], np.tile(np.arange(5), (2, 1)))
  with pytest.raises(teacher_cache.TeacherCacheError, match="k must be"):
    build(tmp_path / "b", model, k=6)
  with pytest.raises(teacher_cache.TeacherCacheError, match="values_dtype"):
    build(tmp_path / "b", model, values_dtype="int8")
  with pytest.raises(teacher_cache.TeacherCacheError, match="replay epochs must be"):
    cache.lookup(np.array([0]), np.array([2]))


# Using the cache --------------------------------------------------------------------------------


def test_wrapped_iterator_and_cached_step_equal_online_kd(tmp_path):
  """The cached KD step on the replayed views equals the online KD step on the same views."""
  model, student = teacher(0), teacher(1)
  cache = build(tmp_path, model, k=None)
  it = cache.wrap(data.make_train_iterator(dataset(), global_batch_size=8, seed=7,
                                           augment=AUGMENT, replay_epochs=2))
  batches = [next(it) for _ in range(6)]  # crosses into replay epoch 1
  assert {0, 1} <= set(np.concatenate([b["replay_epoch"] for b in batches]).tolist())
  tx = optax.sgd(0.1)

  def run(objective, with_teacher):
    state = kdjax.DistillState.create(student=student, teacher=model if with_teacher else None,
                                      objective=objective, tx=tx, rng=jax.random.key(0),
                                      example_batch=batches[0])
    step = jax.jit(kdjax.distill_step)
    losses = []
    for b in batches:
      state, m = step(state, b)
      losses.append(float(m["kd"]))
    return losses, state.params["student"]

  online = run(objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                   "kd": (objectives.kd(temperature=4.0), 0.9)}), True)
  cached = run(objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                   "kd": (cache.term(temperature=4.0), 0.9)}), False)
  np.testing.assert_allclose(cached[0], online[0], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), cached[1],
               online[1])
  # Wrapping checks that the stream's views are the cached ones.
  with pytest.raises(teacher_cache.TeacherCacheError, match="seed: cache 7 vs data 8"):
    cache.wrap(data.make_train_iterator(dataset(), global_batch_size=8, seed=8, augment=AUGMENT,
                                        replay_epochs=2))
  with pytest.raises(teacher_cache.TeacherCacheError, match="no augmentation replay"):
    cache.wrap(data.make_train_iterator(dataset(), global_batch_size=8, seed=7))
  assert it.get_state()["step"] == 6


def numpy_topk_kd(student, values, indices, temperature):
  """T^2 sum_I q (log q - log p_s), q = softmax(v / T) over the cached classes."""
  z = student / temperature
  log_ps = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
      -1, keepdims=True)
  log_ps_k = np.take_along_axis(log_ps, indices, -1)
  v = values / temperature
  log_q = v - np.log(np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)) - v.max(
      -1, keepdims=True)
  return temperature**2 * (np.exp(log_q) * (log_q - log_ps_k)).sum(-1)


def test_cached_kd_term_formula_mask_and_grads():
  rng = np.random.default_rng(0)
  s = rng.standard_normal((6, 7)).astype(np.float32)
  t = rng.standard_normal((6, 7)).astype(np.float32) * 3
  idx = np.argsort(-t, -1)[:, :3].astype(np.int16)
  vals = np.take_along_axis(t, idx.astype(np.int64), -1).astype(np.float16)
  mask = np.array([1, 1, 0, 1, 0, 1], bool)
  term = objectives.cached_kd(temperature=2.0)
  assert term.needs.batch == (objectives.TOPK_VALUES_KEY, objectives.TOPK_INDICES_KEY)
  batch = {objectives.TOPK_VALUES_KEY: vals, objectives.TOPK_INDICES_KEY: idx, "mask": mask}
  loss, _, _ = term.apply({}, {}, Outputs(jnp.asarray(s), {}), None, batch, 0)
  expected = numpy_topk_kd(s.astype(np.float64), vals.astype(np.float64), idx, 2.0)
  np.testing.assert_allclose(float(loss), expected[mask].mean(), rtol=1e-5)

  def f(logits):
    return term.apply({}, {}, Outputs(logits, {}), None, batch, 0)[0]

  check_grads(jax.jit(f), (jnp.asarray(s),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_check_objective_names_terms_that_need_the_teacher():
  teacher_cache.check_objective({"ce": {"kind": "cross_entropy", "weight": 0.1},
                                 "kd": {"kind": "cached_kd", "weight": 0.9, "temperature": 4.0}})
  with pytest.raises(teacher_cache.TeacherCacheError,
                     match=r"'hint' \(kind 'fitnets', reads teacher features \['stage2'\]\)"):
    teacher_cache.check_objective({
        "kd": {"kind": "cached_kd"},
        "hint": {"kind": "fitnets", "student": "stage1", "teacher": "stage2"}})
  with pytest.raises(teacher_cache.TeacherCacheError, match="'kd' \\(kind 'kd'"):
    teacher_cache.check_objective({"kd": {"kind": "kd", "temperature": 4.0}})
  with pytest.raises(teacher_cache.TeacherCacheError,
                     match=r"'at' \(reads teacher features \['stage2'\]\)"):
    teacher_cache.check_objective({"at": (objectives.attention_transfer(student="stage1", teacher="stage2"), 1.0),
                                   "kd": objectives.cached_kd()})
  assert "cached_kd" in objectives.term_kinds()


_KILLED_BUILD = """
import sys, time
sys.path.insert(0, {root!r})
from tests import test_teacher_cache as t
t.build(sys.argv[1], t.teacher(), on_chunk=lambda done, total: (print(done, flush=True),
                                                                 time.sleep(0.5)))
"""


@pytest.mark.slow
def test_build_killed_in_a_subprocess_resumes(tmp_path):
  """SIGKILL during the build (a real process), then a rerun: equal to an uninterrupted build."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = tmp_path / "build.py"
  script.write_text(_KILLED_BUILD.format(root=root))
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")],
                          stdout=subprocess.PIPE, text=True, env=env)
  for line in proc.stdout:
    if int(line) >= 3:
      proc.kill()
      break
  proc.wait()
  done = [u for u in os.listdir(tmp_path / "killed" / "units") if u.endswith("values.npy")]
  assert 3 <= len(done) < 10 and not (tmp_path / "killed" / "meta.json").exists()
  calls = []
  resumed = build(tmp_path / "killed", teacher(), on_chunk=lambda d, t: calls.append(d))
  assert len(calls) == 10 - len(done)
  full_run = build(tmp_path / "full", teacher())
  np.testing.assert_array_equal(resumed.values, full_run.values)
  np.testing.assert_array_equal(resumed.indices, full_run.indices)

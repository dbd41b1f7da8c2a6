"""Reliability of the run layer: inputs recorded and checked, full disks, NaN diagnosis.

Fast tests; the ones that kill and resume a command, or fill a disk under one, are in
``test_reliability_resume.py`` (slow).
"""
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import threading

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import data as data_lib
from kdjax import models
from kdjax import objectives
from kdjax import workdir as contract
from kdjax.train import config as config_lib
from kdjax.train import describe
from kdjax.train import execute
from kdjax.train import inputs
from kdjax.train import kinds
from kdjax.train import pipeline
from kdjax.train import quiet
from kdjax.train import rundata
from kdjax.train import writers
from kdjax.train.actions import PreemptionWatch
from kdjax.train.errors import ConfigError, NonFiniteLossError, WorkdirError
from kdjax.train.ledger import Workdir
from kdjax import train
from tests import helpers
from tests.train.conftest import tiny

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")


@pytest.fixture(name="small_disk")
def fixture_small_disk(tmp_path):
  """A 256 KiB tmpfs: a file system that fills up."""
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                        capture_output=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
  yield str(mount)
  subprocess.run(["umount", "-l", str(mount)], check=False)


# --- 1. A run's inputs, recorded at its start and checked on resume --------------------------


class _Data:
  def __init__(self, fingerprint):
    self._fingerprint = fingerprint

  def fingerprint(self):
    return self._fingerprint


def _context(tmp_path, teacher_dir, fingerprint="data-1"):
  config = config_lib.resolve(tiny(**{"teacher.checkpoint": str(teacher_dir)}))
  decls = {d.name: d for d in kinds.declarations(config)}
  return kinds.Context(config=config, data=_Data(fingerprint), workdir=str(tmp_path / "w"),
                       decls=decls)


def test_a_resume_with_another_teacher_file_is_refused(tmp_path):
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "teacher.msgpack").write_bytes(b"teacher one")
  ctx = _context(tmp_path, teacher)
  work, decl = ctx.workdir, ctx.decls["student_kd"]
  inputs.check_or_record(work, ctx, decl)
  saved = json.load(open(contract.inputs_path(work, "student_kd")))
  assert set(saved) == {"config", "data", "models"} and saved["data"] == "data-1"
  assert "teacher.checkpoint" in saved["config"] and "log_every" not in saved["config"]
  os.makedirs(os.path.join(contract.checkpoint_dir(work, "student_kd"), "10"))
  inputs.check_or_record(work, ctx, decl)  # Same inputs: resumes.

  (teacher / "teacher.msgpack").write_bytes(b"teacher two")  # Swapped between kill and resume.
  with pytest.raises(WorkdirError) as e:
    inputs.check_or_record(work, _context(tmp_path, teacher), decl)
  message = str(e.value)
  assert "\n" not in message
  assert "run 'student_kd'" in message and "the model of run 'teacher'" in message
  assert "restore the original inputs" in message and "new --workdir" in message
  assert json.load(open(contract.inputs_path(work, "student_kd"))) == saved  # Not overwritten.

  (teacher / "teacher.msgpack").write_bytes(b"teacher one")
  with pytest.raises(WorkdirError, match=r"the data \(config.data.name='digits'\)"):
    inputs.check_or_record(work, _context(tmp_path, teacher, fingerprint="data-2"), decl)


def test_a_run_without_checkpoints_records_its_inputs_again(tmp_path):
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "t.msgpack").write_bytes(b"one")
  ctx = _context(tmp_path, teacher)
  inputs.check_or_record(ctx.workdir, ctx, ctx.decls["student_kd"])
  (teacher / "t.msgpack").write_bytes(b"two")  # Killed before its first checkpoint: starts over.
  inputs.check_or_record(ctx.workdir, ctx, ctx.decls["student_kd"])


def test_data_fingerprint_sees_another_file_under_the_same_name(tmp_path):
  path = tmp_path / "d.npz"
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8)
  labels = np.arange(40) % 4

  def fingerprint():
    config = config_lib.resolve(tiny(**{"data.name": f"npz:{path}"}))
    return rundata.make(config).fingerprint()

  np.savez(path, train_images=images, train_labels=labels, test_images=images[:8],
           test_labels=labels[:8])
  first = fingerprint()
  assert fingerprint() == first
  labels = labels[::-1].copy()
  np.savez(path, train_images=images, train_labels=labels, test_images=images[:8],
           test_labels=labels[:8])
  assert fingerprint() != first


# --- 3. A full disk ---------------------------------------------------------------------------


def test_space_check_states_its_rule(monkeypatch):
  usage = shutil.disk_usage("/")
  monkeypatch.setattr(shutil, "disk_usage",
                      lambda path: usage._replace(free=300_000))
  with pytest.raises(WorkdirError) as e:
    pipeline._check_space("/tmp/w", 100_000)  # pylint: disable=protected-access
  message = str(e.value)
  assert message.startswith("no space left on device for --workdir=/tmp/w: a run keeps its last "
                            "checkpoint while it writes the next, so the disk must hold two "
                            "checkpoints of the largest run, 0.46 MB (0.23 MB each")
  assert "0.30 MB are free" in message
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10**9))
  pipeline._check_space("/tmp/w", 100_000)  # pylint: disable=protected-access


@needs_root
def test_tensorboard_writer_fails_on_a_full_disk_instead_of_hanging(small_disk):
  outcome = {}

  def write():
    writer = writers.make_writer(os.path.join(small_disk, "run"), run="run", start_step=0,
                                 enabled=True, tensorboard=True)
    try:
      for step in range(1, 100_000):
        writer.write(step, {"loss": 1.0, "accuracy": 0.5, "steps_per_s": 3.0})
    except OSError as e:
      outcome["error"] = e
    try:
      writer.close()
    except OSError:
      pass
    outcome["closed"] = True

  thread = threading.Thread(target=write, daemon=True)
  thread.start()
  thread.join(60)
  assert not thread.is_alive(), "the metric writers hung on a full disk"
  assert outcome["error"].errno == errno.ENOSPC and outcome["closed"]


def test_a_signal_while_a_failing_run_closes_stops_at_once():
  with PreemptionWatch() as watch:
    watch.at_once()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # The handler runs between bytecodes.
        pass
  with PreemptionWatch() as watch:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
      pass
    assert watch.signum == signal.SIGTERM  # The first asks for a save and a stop...
    with pytest.raises(KeyboardInterrupt):  # ... a second one stops at once.
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):
        pass


def test_background_checkpoint_failures_on_a_full_disk_stay_quiet():
  one_line = quiet._OneLine()  # pylint: disable=protected-access
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/w/t/checkpoints/20/x")
    except OSError as e:
      raise ValueError("Failed to run 4 Handler Commit operations") from e
  except ValueError:
    import sys  # pylint: disable=g-import-not-at-top
    exc_info = sys.exc_info()
  try:
    commit = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/async_checkpointer.py",
                               1, "Failed to run 4 Handler Commit operations", (), exc_info)
    finalize = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/manager.py", 1,
                                 "Save Finalize thread (save_finalize) failed.", (), None)
    loop = logging.LogRecord("asyncio", logging.ERROR, "/x/asyncio/base_events.py", 1,
                             "Event loop is closed", (), None)
    assert not one_line.filter(commit)
    assert not one_line.filter(finalize) and not one_line.filter(loop)
  finally:
    quiet._OneLine.disk_full = False  # pylint: disable=protected-access
  other = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/manager.py", 1,
                            "Save Finalize thread (save_finalize) failed.", (), None)
  assert one_line.filter(other)  # Without a full disk the record is kept (one line).


# --- 7. NaN: blame the data, keep masked examples out, strict results.json --------------------


def test_a_masked_non_finite_example_stays_out_of_the_gradient():
  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.5),
                                  "kd": (objectives.kd(temperature=4.0), 0.5)})
  batch = {**helpers.batch(), "mask": np.ones(8, bool)}
  state = kdjax.DistillState.create(
      student=helpers.tap_mlp(1), teacher=helpers.tap_mlp(0, hidden=32), objective=objective,
      tx=optax.sgd(0.1), rng=jax.random.key(0), example_batch=batch)
  key = state.input_key
  x = np.array(batch[key])
  mask = np.ones(8, bool)
  mask[3] = False
  clean_x = x.copy()
  clean_x[3] = 0.0
  x[3] = np.nan
  step = jax.jit(kdjax.distill_step)
  poisoned, _ = step(state, {**batch, key: x, "mask": mask})
  clean, _ = step(state, {**batch, key: clean_x, "mask": mask})
  for leaf in jax.tree.leaves(poisoned.params):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               poisoned.params, clean.params)


def test_non_finite_entry_names_the_key_and_example_and_skips_masked_ones():
  batch = {"image": np.zeros((4, 2, 2), np.float32), "label": np.arange(4)}
  assert execute.non_finite_entry(batch, 5) == ""
  batch["image"][2, 1, 0] = np.inf
  assert execute.non_finite_entry(batch, 5) == (
      "the batch of step 5 holds a non-finite value (NaN or inf) in batch['image'], example 2")
  batch["mask"] = np.array([1, 1, 0, 1], bool)
  assert execute.non_finite_entry(batch, 5) == ""


def _poison(monkeypatch, indices):
  """Training batches whose examples with these dataset indices have NaN images."""
  make = rundata.ImageData.train_iterator

  class Poisoned:
    def __init__(self, inner):
      self.inner = inner

    def __iter__(self):
      return self

    def __next__(self):
      batch = dict(next(self.inner))
      bad = np.isin(np.asarray(batch["index"]), indices)
      if bad.any():
        image = np.array(batch["image"])
        image[bad] = np.nan
        batch["image"] = image
      return batch

    def __getattr__(self, name):
      return getattr(self.inner, name)

  monkeypatch.setattr(rundata.ImageData, "train_iterator",
                      lambda self, **kw: Poisoned(make(self, **kw)))


@pytest.mark.parametrize("checked_steps", [0, 10])
def test_a_non_finite_batch_is_blamed_on_the_data(tmp_path, monkeypatch, checked_steps):
  _poison(monkeypatch, np.arange(40, 60))
  config = tiny(**{"teacher_only": True, "teacher.total_steps": 8, "checkpoint_every": 2,
                   "eval_every": 0, "checked_steps": checked_steps,
                   "logging.tensorboard": False})
  with pytest.raises((NonFiniteLossError, ValueError)) as e:
    train.train_and_evaluate(config, str(tmp_path / "w"))
  message = describe.describe(e.value, str(tmp_path / "w"))
  assert "batch['image']" in message and "non-finite" in message, message
  assert "learning rate" not in message and "learning_rate" not in message, message
  assert "mask that example out with batch['mask']" in message


def test_a_teacher_file_of_nan_is_blamed_on_the_teacher_file(tmp_path):
  info = data_lib.get_info("digits")
  module = models.get_model("mlp", num_classes=info.num_classes, hidden=(16,))
  params = module.init(jax.random.key(0), jnp.zeros((1, *info.input_shape)))["params"]
  params = jax.tree.map(lambda p: np.full(p.shape, np.nan, np.float32), params)
  path = tmp_path / "teacher.msgpack"
  path.write_bytes(flax.serialization.to_bytes(params))
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(tiny(**{"teacher.checkpoint": str(path)}), str(workdir))
  message = str(e.value)
  assert message.startswith("config.teacher.checkpoint: the model read from it has non-finite "
                            "values"), message
  assert "learning rate" not in message
  assert not workdir.exists() or not os.listdir(workdir)  # Refused before anything was written.


def test_results_json_is_strict_json_with_a_note(tmp_path):
  work = Workdir(tmp_path)
  work.record("student", {"accuracy": 0.1, "ece": float("nan"), "members": [{"x": np.float32(
      np.inf)}], "steps": 3})

  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")

  with open(tmp_path / contract.RESULTS_FILE) as f:
    saved = json.load(f, parse_constant=refuse)
  entry = saved["student"]
  assert entry["ece"] is None and entry["members"][0]["x"] is None
  assert entry["accuracy"] == 0.1 and entry["steps"] == 3
  assert entry["note"] == "not finite (NaN or inf), written as null: ece, members[0].x"
  assert train.results_table(saved)  # Tables show null as '-'.


# --- 8. Data checks before anything is written -------------------------------------------------


def test_an_empty_train_split_is_refused_before_anything_is_written(tmp_path):
  path = tmp_path / "d.npz"
  rng = np.random.default_rng(0)
  np.savez(path, train_images=np.zeros((0, 8, 8, 1), np.uint8),
           train_labels=np.zeros((0,), np.int64),
           test_images=rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8),
           test_labels=np.arange(20) % 4)
  workdir = tmp_path / "w"
  with _no_warnings():
    with pytest.raises(data_lib.DataError, match="train split is empty"):
      train.train_and_evaluate(tiny(**{"data.name": f"npz:{path}"}), str(workdir))
  assert not workdir.exists()


class _no_warnings:  # pylint: disable=invalid-name
  """Turns RuntimeWarnings (numpy's mean of an empty array, say) into errors."""

  def __enter__(self):
    import warnings  # pylint: disable=g-import-not-at-top
    self._catch = warnings.catch_warnings()
    self._catch.__enter__()
    warnings.simplefilter("error", RuntimeWarning)

  def __exit__(self, *exc):
    self._catch.__exit__(*exc)


# --- 5. Every config value checked before any work, naming its key ---------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"compress.pruning": 0.5, "compress.steps": -1}, "config.compress.steps"),
    ({"export.formats": ("tflite",)}, "config.export.formats"),
    ({"compress.quantization": "ptq", "compress.weight_bits": 4, "student.model": "cnn_small",
      "student.model_kwargs": {}}, "config.compress.act_bits=4"),
    ({"compress.quantization": "qat", "compress.weight_bits": 4, "student.model": "cnn_small",
      "student.model_kwargs": {}}, "config.compress.act_bits=4"),
    ({"compress.pruning": 0.8, "compress.prune_end": 100000}, "config.compress.prune_end"),
    ({"compress.quantization": "qat", "compress.weight_bits": 0}, "config.compress.weight_bits"),
    ({"compress.quantization": "qat", "compress.weight_bits": 3}, "config.compress.weight_bits"),
    ({"compress.quantization": "qat", "compress.act_bits": 5}, "config.compress.act_bits"),
    ({"compress.pruning": 0.5, "compress.prune_frequency": 0}, "config.compress.prune_frequency"),
    ({"compress.pruning": 0.5, "compress.keep_dense": ("(",)}, "config.compress.keep_dense"),
])
def test_config_values_fail_before_any_work_naming_their_key(tmp_path, overrides, key):
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(tiny(**overrides), str(workdir))
  assert key in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert not workdir.exists()


# --- 9. Teacher caches keyed by their fingerprint -----------------------------------------------


def test_the_cache_directory_is_keyed_by_the_teacher_and_settings(tmp_path):
  from kdjax.train.kinds import _cached_teacher  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(tiny(**{"teacher_cache.enabled": True}))
  data = rundata.make(config)
  cached = _cached_teacher.CachedTeacherData(
      data, config.teacher_cache, run="student_kd", root=str(tmp_path / "teacher"),
      teacher=None, teacher_config={"model": "mlp"}, seed=0, num_classes=10, temperature=1.0)
  views = data.replay_views(seed=0, replay_epochs=1)
  one = models.Model(apply=None, params={"w": np.zeros(3, np.float32)}, model_state={})
  two = models.Model(apply=None, params={"w": np.ones(3, np.float32)}, model_state={})
  first = cached.keyed_directory(one, views)
  assert os.path.dirname(first) == str(tmp_path / "teacher")
  assert cached.keyed_directory(one, views) == first
  assert cached.keyed_directory(two, views) != first


# --- 2. Teacher-cache contents checked against their checksums ----------------------------------


def test_a_cache_overwritten_with_same_shape_noise_is_never_used(tmp_path):
  from kdjax import teacher_cache  # pylint: disable=g-import-not-at-top
  from tests import test_teacher_cache as cache_helpers  # pylint: disable=g-import-not-at-top
  model = cache_helpers.teacher()
  cache = cache_helpers.build(tmp_path, model)
  good = np.array(cache.values)
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert len(meta["checksums"]["values"]) == len(meta["checksums"]["indices"]) == 2 * 5
  noise = np.random.default_rng(0).standard_normal(good.shape).astype(good.dtype)
  np.save(tmp_path / "values.npy", noise)  # Same shape and dtype: only the checksums tell.
  with pytest.raises(teacher_cache.TeacherCacheCorrupt) as e:
    teacher_cache.load_teacher_cache(tmp_path, fingerprint=cache.fingerprint)
  assert ("values.npy, replay epoch 0, examples 0..7 (and 9 more of 10 parts) do not match "
          "their checksums") in str(e.value)
  with pytest.raises(teacher_cache.TeacherCacheCorrupt):
    cache_helpers.build(tmp_path, model, on_stale="error")
  rebuilt = cache_helpers.build(tmp_path, model)  # The default rebuilds it.
  np.testing.assert_array_equal(rebuilt.values, good)

  indices = np.load(tmp_path / "indices.npy")
  indices[1, 20, 0] = (indices[1, 20, 0] + 1) % 5  # One changed entry, in one part.
  np.save(tmp_path / "indices.npy", indices)
  with pytest.raises(teacher_cache.TeacherCacheCorrupt,
                     match=r"indices.npy, replay epoch 1, examples 16..23 \(and 0 more"):
    teacher_cache.load_teacher_cache(tmp_path)


def test_callbacks_into_a_closed_event_loop_stay_quiet():
  seen = []
  quiet_callbacks = quiet._quiet_callbacks  # pylint: disable=protected-access
  hook = quiet_callbacks(lambda *args: seen.append(args[1]))
  hook(RuntimeError, RuntimeError("Event loop is closed"), None)  # A failed save's echo.
  assert not seen
  other = ValueError("something else")
  hook(ValueError, other, None)
  assert seen == [other]

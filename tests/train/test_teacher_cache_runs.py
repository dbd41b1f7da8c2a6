"""config.teacher_cache: distill runs that read an offline teacher cache instead of the teacher."""
import json
import os
import signal
import time

import numpy as np
import pytest

from kdjax import train
from kdjax.train.kinds import _cached_teacher as cache_runs
from kdjax.train import config as config_lib
from tests.train.conftest import TINY_CONFIG_FILE, cli, kill_when, run_cli, tiny, train_losses

STEPS = 12
NUM_TRAIN = 1438  # digits' training split
SHORT = {"compare_baseline": False, "total_steps": STEPS, "teacher.total_steps": 10,
         "eval_every": 0, "checkpoint_every": STEPS}


def cache_dir(workdir):
  """The teacher cache of run ``teacher`` in ``workdir``: ``teacher_cache/teacher/<key>``."""
  root = os.path.join(workdir, "teacher_cache", "teacher")
  keyed = sorted(os.listdir(root)) if os.path.isdir(root) else []
  assert len(keyed) <= 1, keyed
  return os.path.join(root, keyed[0]) if keyed else os.path.join(root, "?")


@pytest.fixture(scope="module", name="online_and_cached")
def fixture_online_and_cached(tmp_path_factory):
  """The short pipeline with the online teacher, then its student_kd again on a full float32
  cache of the same (loaded) teacher, no augmentation: ``(online, cached)`` workdirs."""
  online = str(tmp_path_factory.mktemp("online"))
  train.train_and_evaluate(tiny(**SHORT), online)
  cached = str(tmp_path_factory.mktemp("cached"))
  train.train_and_evaluate(tiny(**SHORT, **{
      "teacher.checkpoint": os.path.join(online, "teacher"), "teacher_cache.enabled": True,
      "teacher_cache.replay_epochs": 2, "teacher_cache.values_dtype": "float32"}), cached)
  return online, cached


def test_cached_run_writes_the_cache_and_trains_without_the_teacher(online_and_cached):
  _, cached = online_and_cached
  directory = cache_dir(cached)
  assert sorted(os.listdir(directory)) == ["meta.json", "values.npy"]  # full: no indices
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  assert meta["complete"] and meta["k"] == 10 and meta["replay_epochs"] == 2
  values = np.load(os.path.join(directory, "values.npy"), mmap_mode="r")
  assert values.shape == (2, NUM_TRAIN, 10) and values.dtype == np.float32
  results = train.read_results(cached)
  assert set(results) == {"teacher", "student_kd"}
  assert results["student_kd"]["steps"] == STEPS
  assert 0.0 <= results["student_kd"]["accuracy"] <= 1.0
  assert "agreement" in results["student_kd"]  # evaluation still compares with the teacher
  records = train.read_metrics(os.path.join(cached, "student_kd", "metrics.jsonl"))
  steps = [r for r in records if not r.get("eval")]
  assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
  # The step has no teacher: no batch agreement; the KD term reads the cache.
  assert all("agreement" not in r and np.isfinite(r["kd"]) for r in steps)


def test_full_cache_gives_the_online_kd_trajectory(online_and_cached):
  """Without augmentation the replayed stream is the online stream, and KD on all the teacher's
  logits (float32) is Hinton KD: the same losses at every step, to float rounding."""
  online, cached = online_and_cached
  got, want = train_losses(cached, "student_kd"), train_losses(online, "student_kd")
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-5)
  a, b = train.read_results(cached)["student_kd"], train.read_results(online)["student_kd"]
  assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 359
  assert abs(a["agreement"] - b["agreement"]) <= 1 / 359


def test_feature_term_with_the_cache_fails_before_any_work(tmp_path):
  config = tiny(**{"teacher_cache.enabled": True})
  config.objective = {"ce": {"kind": "cross_entropy", "weight": 0.1},
                      "kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0},
                      "hint": {"kind": "fitnets", "weight": 1.0, "student": "pre_logits",
                               "teacher": "pre_logits"}}
  workdir = tmp_path / "run"
  with pytest.raises(train.ConfigError) as caught:
    train.train_and_evaluate(config, str(workdir))
  message = str(caught.value)
  assert "\n" not in message
  assert "'hint' (kind 'fitnets', reads teacher features ['pre_logits'])" in message
  assert "need the online teacher" in message and "teacher_cache" in message
  assert "'kd'" not in message  # a plain KD term runs on the cache
  assert not workdir.exists()


def test_objective_on_the_cache():
  settings = tiny().teacher_cache
  spec = {"ce": {"kind": "cross_entropy", "weight": 0.1},
          "kd": {"kind": "kd", "weight": 0.9, "temperature": 2.0, "warmup_steps": 5}}
  assert cache_runs.objective_on_cache(spec, settings, run="r") == {
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "cached_kd", "weight": 0.9, "temperature": 2.0, "warmup_steps": 5,
             "mode": "renormalize"}}
  with pytest.raises(train.ConfigError, match=r"'kd' \(kind 'kd'.*online teacher"):
    cache_runs.objective_on_cache({"kd": {"kind": "kd", "standardize": True}}, settings, run="r")
  with pytest.raises(train.ConfigError, match=r"'dkd' \(kind 'dkd'"):
    cache_runs.objective_on_cache({"dkd": {"kind": "dkd"}}, settings, run="r")
  with pytest.raises(train.ConfigError, match="config.teacher_cache.mode='renormalize'"):
    cache_runs.objective_on_cache({"kd": {"kind": "cached_kd", "mode": "remainder"}}, settings,
                                  run="r")
  two = {"a": {"kind": "cached_kd", "temperature": 2.0}, "b": {"kind": "cached_kd"}}
  assert cache_runs.cache_temperature(two, "renormalize", run="r") == 1.0
  with pytest.raises(train.ConfigError, match=r"use \[2.0, 4.0\]"):
    cache_runs.cache_temperature(two, "remainder", run="r")
  assert cache_runs.cache_temperature({"a": two["a"]}, "remainder", run="r") == 2.0


@pytest.mark.parametrize("overrides, message", [
    ({"teacher_cache.values_dtype": "int8"}, "config.teacher_cache.values_dtype='int8'"),
    ({"teacher_cache.k": -1}, "config.teacher_cache.k must be an integer >= 0"),
    ({"teacher_cache.enabled": True, "data.augment.mixup_alpha": 0.2}, "mixup / CutMix"),
    ({"teacher_cache.enabled": True, "teacher_cache.k": 11}, "config.teacher_cache.k=11"),
])
def test_bad_cache_settings_fail_before_any_work(tmp_path, overrides, message):
  with pytest.raises(train.ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
    train.train_and_evaluate(tiny(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_cache_keys_of_an_older_config_json_match_their_defaults():
  config = config_lib.resolve({}, num_classes=10)
  saved = json.loads(config_lib.to_json(config))
  del saved["teacher_cache"]
  assert config_lib.differing_keys(saved, config) == []
  runtime = config_lib.resolve({"teacher_cache": {"dir": "/elsewhere", "batch_size": 64,
                                                  "chunk_size": 256, "on_stale": "error"}},
                               num_classes=10)
  assert config_lib.differing_keys(saved, runtime) == []
  enabled = config_lib.resolve({"teacher_cache": {"enabled": True, "k": 5}}, num_classes=10)
  assert config_lib.differing_keys(saved, enabled) == ["teacher_cache.enabled", "teacher_cache.k"]


# A real process, killed -------------------------------------------------------------------------

CACHE_ARGS = ("--config.compare_baseline=False", "--config.teacher_cache.enabled=True",
              "--config.teacher_cache.k=3", "--config.teacher_cache.replay_epochs=4",
              "--config.teacher_cache.chunk_size=4", "--config.teacher_cache.batch_size=8",
              "--config.data.augment.crop_padding=1")


def kill_during_build(workdir, *args, units=20, timeout=900):
  """Starts the CLI and SIGKILLs it once ``units`` units of its teacher cache are written."""
  process = cli(*args)
  deadline = time.time() + timeout
  while True:
    assert process.poll() is None, process.communicate()[1][-3000:]
    directory = os.path.join(cache_dir(workdir), "units")
    assert time.time() < deadline, f"{directory} did not fill within {timeout}s"
    if os.path.isdir(directory):
      done = [n for n in os.listdir(directory) if n.endswith(".values.npy")]
      if len(done) >= units:
        break
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait()


@pytest.mark.slow
def test_killed_while_building_the_cache_then_rerun_equals_uninterrupted(tmp_path):
  """SIGKILL during the cache build, again during the student's training; the same command then
  finishes with the uninterrupted run's cache, losses, metrics and parameters."""
  args = (f"--config={TINY_CONFIG_FILE}", *CACHE_ARGS)
  reference = str(tmp_path / "reference")
  run_cli(*args, f"--workdir={reference}")
  workdir = str(tmp_path / "killed")
  kill_during_build(workdir, *args, f"--workdir={workdir}")
  directory = cache_dir(workdir)
  assert not os.path.exists(os.path.join(directory, "meta.json"))  # killed mid-build
  assert "student_kd" not in train.read_results(workdir)
  kill_when(os.path.join(workdir, "student_kd", "checkpoints", "10"), *args,
            f"--workdir={workdir}")
  assert "student_kd" not in train.read_results(workdir)
  run_cli(*args, f"--workdir={workdir}")

  for name in ("values.npy", "indices.npy", "meta.json"):
    with open(os.path.join(directory, name), "rb") as a, open(
        os.path.join(cache_dir(reference), name), "rb") as b:
      assert a.read() == b.read(), name
  got, want = train_losses(workdir, "student_kd"), train_losses(reference, "student_kd")
  assert sorted(got) == sorted(want) == list(range(1, 41))
  assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
  results, expected = train.read_results(workdir), train.read_results(reference)
  for key in ("accuracy", "top5", "macro_f1", "ece", "agreement"):
    assert results["student_kd"][key] == expected["student_kd"][key], key
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  final = [ocp.PyTreeCheckpointer().restore(
      os.path.join(w, "student_kd", "checkpoints", "40", "state")) for w in (workdir, reference)]
  jax.tree.map(np.testing.assert_array_equal, final[0]["params"], final[1]["params"])

"""config.teacher_cache on language models: distill runs read the teacher's top-k or sampled
targets (Gemma 3) from a token cache built before the run; a stale cache is refused."""
import json
import os
import signal
import time

import numpy as np
import pytest

from kdjax import objectives
from kdjax import teacher_cache as tc
from kdjax import train
from kdjax.configs import common
from kdjax.train.kinds import _cached_teacher as cache_runs
from tests import helpers
from tests.train.conftest import cli, run_cli

LM = {"n_heads": 2, "max_len": 16, "dropout_rate": 0.0}
STEPS = 30


def lm_config(**overrides):
  """A tiny token-level LM pipeline on the bundled text: teacher, student_kd (no baseline)."""
  config = common.text_lm(sequence_length=16, eval_batch_size=256, batch_size=16,
                          total_steps=STEPS, log_every=1, eval_every=0, checkpoint_every=STEPS)
  config.teacher.model = "transformer_lm"
  config.teacher.model_kwargs = {"d_model": 32, "n_layers": 1, **LM}
  config.teacher.total_steps = 20
  config.student.model = "transformer_lm"
  config.student.model_kwargs = {"d_model": 16, "n_layers": 1, **LM}
  config.optimizer.learning_rate = 3e-3
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
  config.compare_baseline = False
  config.progress_bar = False
  return helpers.with_overrides(config, overrides)


def _cache_dir(workdir, targets):
  return os.path.join(workdir, "teacher_cache", "teacher", targets)


@pytest.fixture(scope="module", name="teacher_dir")
def fixture_teacher_dir(tmp_path_factory):
  """A workdir whose run ``teacher`` trained (the other runs load it)."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  train.train_and_evaluate(lm_config(**{"total_steps": 1, "checkpoint_every": 1}), workdir)
  return workdir


def _cached(teacher_dir, workdir, **overrides):
  config = lm_config(**{"teacher.checkpoint": os.path.join(teacher_dir, "teacher"),
                        "teacher_cache.enabled": True, **overrides})
  train.train_and_evaluate(config, str(workdir))
  return train.read_metrics(os.path.join(workdir, "student_kd", "metrics.jsonl"))


@pytest.mark.slow  # trains a teacher and a student (about a minute on 2 cores)
def test_sampled_cache_run_trains_on_the_cache(teacher_dir, tmp_path):
  records = _cached(teacher_dir, tmp_path / "run", **{"teacher_cache.targets": "sampled",
                                                      "teacher_cache.k": 4})
  directory = _cache_dir(tmp_path / "run", "sampled")
  assert sorted(os.listdir(directory)) == ["indices.npy", "meta.json", "weights.npy"]
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  assert meta["complete"] and meta["k"] == 4 and meta["seed"] == 0
  assert meta["tokenizer"] == "bytes:102" and meta["weighting"] == "renormalized"
  cache = tc.load_token_cache(directory)
  w = np.asarray(cache.arrays[objectives.SAMPLED_WEIGHTS_KEY][:8], np.float32)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=2e-3)  # float16 weights, renormalised
  steps = [r for r in records if not r.get("eval")]
  assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
  kd = [r["kd"] for r in steps]
  assert all(np.isfinite(kd))
  assert np.mean(kd[-5:]) < 0.8 * np.mean(kd[:5])  # the student learns the sampled targets
  results = train.read_results(str(tmp_path / "run"))
  assert np.isfinite(results["student_kd"]["perplexity"])


@pytest.mark.slow
def test_topk_cache_run_and_a_stale_cache_is_refused(teacher_dir, tmp_path):
  shared = {"teacher_cache.dir": str(tmp_path / "caches"), "teacher_cache.k": 5,
            "total_steps": 3, "checkpoint_every": 3}
  records = _cached(teacher_dir, tmp_path / "a", **shared)
  assert sorted(os.listdir(tmp_path / "caches" / "teacher" / "topk")) == [
      "indices.npy", "meta.json", "values.npy"]
  assert all(np.isfinite(r["kd"]) for r in records if not r.get("eval"))
  with pytest.raises(train.ConfigError) as caught:
    _cached(teacher_dir, tmp_path / "b", **{**shared, "teacher_cache.k": 3,
                                            "teacher_cache.on_stale": "error"})
  message = str(caught.value)
  assert "\n" not in message
  assert "config.teacher_cache.k (cache 5, now 3)" in message
  assert "config.teacher_cache.on_stale='rebuild'" in message


def test_sampled_targets_with_a_cached_kd_term_are_refused():
  settings = lm_config(**{"teacher_cache.targets": "sampled", "teacher_cache.k": 4}).teacher_cache
  spec = {"kd": {"kind": "kd", "weight": 1.0, "temperature": 2.0}}
  assert cache_runs.objective_on_cache(spec, settings, run="r") == {
      "kd": {"kind": "sampled_kd", "weight": 1.0, "temperature": 2.0}}
  with pytest.raises(train.ConfigError, match="config.teacher_cache.targets='sampled'"):
    cache_runs.objective_on_cache({"kd": {"kind": "cached_kd"}}, settings, run="r")
  two = {"a": {"kind": "sampled_kd", "temperature": 2.0}, "b": {"kind": "sampled_kd"}}
  with pytest.raises(train.ConfigError, match=r"use \[1.0, 2.0\]"):
    cache_runs.cache_temperature(two, "renormalize", run="r", targets="sampled")


def test_sampled_without_k_fails_in_the_config(tmp_path):
  with pytest.raises(train.ConfigError, match=r"targets='sampled' needs config.teacher_cache.k"):
    train.train_and_evaluate(lm_config(**{"teacher_cache.enabled": True,
                                          "teacher_cache.targets": "sampled"}), str(tmp_path))


TINY_LM_FLAGS = (
    "--config=configs/lm/distill.py", "--config.data.sequence_length=16",
    "--config.data.eval_batch_size=256", "--config.batch_size=16",
    "--config.teacher.model_kwargs.d_model=32", "--config.teacher.model_kwargs.n_layers=1",
    "--config.teacher.model_kwargs.max_len=16", "--config.student.model_kwargs.d_model=16",
    "--config.student.model_kwargs.max_len=16", "--config.teacher.total_steps=10",
    "--config.total_steps=10", "--config.optimizer.warmup_steps=2",
    "--config.teacher.optimizer.warmup_steps=2", "--config.eval_every=0",
    "--config.checkpoint_every=10", "--config.compare_baseline=False",
    "--config.teacher_cache.enabled=True", "--config.teacher_cache.targets=sampled",
    "--config.teacher_cache.k=4", "--config.teacher_cache.batch_size=512",
    "--config.teacher_cache.chunk_size=1024")


@pytest.mark.slow  # three command-line runs, one killed with SIGKILL while building the cache
def test_sampled_cache_killed_mid_build_resumes_to_the_same_arrays(tmp_path):
  reference = str(tmp_path / "reference")
  run_cli(*TINY_LM_FLAGS, f"--workdir={reference}")
  flags = (*TINY_LM_FLAGS, f"--config.teacher.checkpoint={reference}/teacher")
  workdir = str(tmp_path / "killed")
  units = _cache_dir(workdir, "sampled") + "/units"
  process = cli(*flags, f"--workdir={workdir}")
  while not (os.path.isdir(units) and len(os.listdir(units)) >= 4):  # two finished units
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(_cache_dir(workdir, "sampled"), "meta.json"))
  run_cli(*flags, f"--workdir={workdir}")
  for name in ("indices.npy", "weights.npy"):
    with open(os.path.join(_cache_dir(workdir, "sampled"), name), "rb") as a, open(
        os.path.join(_cache_dir(reference, "sampled"), name), "rb") as b:
      assert a.read() == b.read(), name

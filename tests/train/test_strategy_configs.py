"""Every strategy config runs on the engine; mutual learning resumes exactly after SIGKILL."""
import importlib.util
import os

import numpy as np
import pytest

from kdjax import train
from tests.train.conftest import REPO, kill_when, run_cli, train_losses

CONFIGS = {
    "strategies/mutual.py": {"alone_0", "alone_1", "mutual"},
    "strategies/multi_teacher.py": {"teacher", "teacher_b", "teacher_c", "student", "student_kd"},
    "strategies/lwf.py": {"old", "finetune", "lwf"},
    "strategies/born_again.py": {"gen_0", "gen_1", "gen_2"},
    "lm/distill.py": {"teacher", "student", "student_kd"},
}
SHORT = {"total_steps": 12, "log_every": 1, "eval_every": 0, "checkpoint_every": 5,
         "progress_bar": False, "teacher.total_steps": 12, "checked_steps": 0}


def load(name, **overrides):
  path = os.path.join(REPO, "configs", name)
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in {**SHORT, **overrides}.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  if config.runs:  # Shorten the runs that set their own steps too.
    with config.unlocked():
      config.runs = tuple({**r, "steps": 12} if "steps" in r else r for r in config.runs)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_strategy_config_runs_every_declared_run(name, tmp_path):
  warmup = {"optimizer.warmup_steps": 2, "teacher.optimizer.warmup_steps": 2}
  config = load(name, **(warmup if name.startswith("lm/") else {}))
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(results) == CONFIGS[name]
  for run, entry in results.items():
    metric = "perplexity" if name.startswith("lm/") else "accuracy"
    assert np.isfinite(entry[metric]), (run, entry)
    records = train.read_metrics(tmp_path / "run" / run / "metrics.jsonl")
    assert [r["step"] for r in records if not r.get("eval")] == list(range(1, 13)), run
    assert os.path.isdir(tmp_path / "run" / run / "checkpoints" / "12" / "state")
  if name == "strategies/lwf.py":
    for run in ("finetune", "lwf"):
      assert {"old_accuracy", "new_accuracy", "accuracy"} <= set(results[run])
  if name == "strategies/mutual.py":
    assert len(results["mutual"]["members"]) == 2
    assert results["mutual"]["accuracy"] == pytest.approx(
        (results["mutual"]["accuracy_0"] + results["mutual"]["accuracy_1"]) / 2)
  if name == "lm/distill.py":
    assert results["teacher"]["perplexity"] > 1.0


@pytest.mark.slow
def test_mutual_resumes_exactly_after_sigkill(tmp_path):
  args = [f"--config={os.path.join(REPO, 'configs', 'strategies', 'mutual.py')}",
          "--config.total_steps=30", "--config.log_every=1", "--config.eval_every=15",
          "--config.checkpoint_every=5", "--config.progress_bar=False", "--config.checked_steps=0"]
  reference = str(tmp_path / "reference")
  run_cli(*args, f"--workdir={reference}")
  workdir = str(tmp_path / "killed")
  kill_when(os.path.join(workdir, "mutual", "checkpoints", "5"), *args, f"--workdir={workdir}")
  assert "mutual" not in train.read_results(workdir)
  run_cli(*args, f"--workdir={workdir}")

  want, got = train.read_results(reference), train.read_results(workdir)
  assert set(got) == set(want) == {"alone_0", "alone_1", "mutual"}
  for run in want:
    for key in ("accuracy", "accuracy_0", "accuracy_1"):
      assert got[run].get(key) == want[run].get(key), (run, key)
    a, b = train_losses(workdir, run), train_losses(reference, run)
    assert sorted(a) == sorted(b) == list(range(1, 31)), run
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-6)

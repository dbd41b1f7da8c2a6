"""The pipeline end to end on digits: workdir contract, exact resume, preemption, fallbacks."""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from kdjax import train
from kdjax import workdir as contract
from tests.train import tiny_config
from tests.train.conftest import TINY_CONFIG_FILE, cli, snapshot, tiny, train_losses

RUNS = ("teacher", "student", "student_kd")
STEPS = {"teacher": tiny_config.TEACHER_STEPS, "student": tiny_config.STUDENT_STEPS,
         "student_kd": tiny_config.STUDENT_STEPS}
METRICS = ("accuracy", "top5", "macro_f1", "ece", "params", "time_s")


def assert_same_trajectory(workdir, reference_workdir, runs=RUNS):
  for run in runs:
    got, want = train_losses(workdir, run), train_losses(reference_workdir, run)
    assert sorted(got) == list(range(1, STEPS[run] + 1)), run
    assert sorted(want) == sorted(got)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-6, atol=0, err_msg=run)


def assert_same_results(results, reference_results):
  assert set(results) == set(reference_results)
  for run in results:
    for key in ("accuracy", "top5", "macro_f1", "ece", "agreement"):
      assert results[run].get(key) == reference_results[run].get(key), (run, key)


def wait_for(path, process, timeout=600):
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if process.poll() is not None:
      out, err = process.communicate()
      pytest.fail(f"the run ended (rc={process.returncode}) before {path} appeared:\n{err[-3000:]}")
    if time.time() > deadline:
      process.kill()
      pytest.fail(f"{path} did not appear within {timeout}s")
    time.sleep(0.005)


def signal_when_saved(workdir, run, signum):
  """Starts the tiny pipeline on ``workdir`` and sends it ``signum`` once ``run`` has saved step
  10; returns the process."""
  process = cli(f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}")
  wait_for(os.path.join(workdir, run, "checkpoints", "10"), process)
  process.send_signal(signum)
  return process


def test_workdir_contract(reference):
  workdir, results = reference
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk == results
  assert set(results) == set(RUNS)
  for run in RUNS:
    for key in METRICS:
      assert key in results[run], (run, key)
    assert 0.0 <= results[run]["accuracy"] <= 1.0
    assert 0.0 <= results[run]["top5"] <= 1.0
    assert results[run]["accuracy"] <= results[run]["top5"]
    assert results[run]["count"] == 359  # the digits test split, padding excluded
  for run in ("student", "student_kd"):
    assert 0.0 <= results[run]["agreement"] <= 1.0
  assert results["student"]["params"] == results["student_kd"]["params"]
  assert results["teacher"]["params"] > results["student"]["params"]
  # The teacher learned something: well above the 10% of chance on 10 classes.
  assert results["teacher"]["accuracy"] > 0.3

  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["student"]["num_classes"] == 10  # resolved from the dataset
  assert config["teacher"]["optimizer"]["learning_rate"] == 0.2  # set for the teacher
  assert config["teacher"]["optimizer"]["weight_decay"] == config["optimizer"]["weight_decay"]

  for run in RUNS:
    run_dir = os.path.join(workdir, run)
    steps = sorted(int(s) for s in os.listdir(os.path.join(run_dir, "checkpoints"))
                   if s.isdigit())
    assert steps[-1] == STEPS[run]
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", str(steps[-1]), "state"))
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", str(steps[-1]), "data"))
    assert any(n.startswith("events.") for n in os.listdir(run_dir))


def test_metrics_jsonl(reference):
  workdir, results = reference
  for run in RUNS:
    records = train.read_metrics(os.path.join(workdir, run, "metrics.jsonl"))
    train_records = [r for r in records if not r.get("eval")]
    eval_records = [r for r in records if r.get("eval")]
    assert [r["step"] for r in train_records] == list(range(1, STEPS[run] + 1))
    for r in train_records:
      assert isinstance(r["loss"], float) and np.isfinite(r["loss"])
      assert {"accuracy", "learning_rate", "steps_per_s", "examples_per_s"} <= set(r)
    assert all(r["split"] == "eval" for r in eval_records)
    assert eval_records[-1]["step"] == STEPS[run]
    assert eval_records[-1]["accuracy"] == results[run]["accuracy"]
  kd_records = train.read_metrics(os.path.join(workdir, "student_kd", "metrics.jsonl"))
  assert {"ce", "kd", "agreement"} <= set(kd_records[0])  # each term's loss is logged
  assert [r["step"] for r in kd_records if r.get("eval")] == [20, 40]


def test_checkpoint_retention_keeps_latest_and_best(reference):
  workdir, _ = reference
  # keep_checkpoints=2 keeps the two latest of 10, 20, 30, 40; the best evaluated one (20 or 40)
  # is among them or kept on top.
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "student_kd", "checkpoints"))
                 if s.isdigit())
  assert steps[-2:] == [30, 40]
  assert 10 not in steps


def test_finished_runs_are_not_redone(reference):
  workdir, results = reference
  before = snapshot(workdir)
  again = train.train_and_evaluate(tiny(), workdir)
  assert again == results
  assert snapshot(workdir) == before  # no new checkpoints, logs or results


def test_sigkill_then_resume_gives_the_same_run(reference, tmp_path):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "run")
  process = signal_when_saved(workdir, "student_kd", signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  killed = train.read_results(workdir)
  assert "student_kd" not in killed and "student" in killed  # really cut short

  results = train.train_and_evaluate(tiny(), workdir)
  assert_same_results(results, ref_results)
  assert_same_trajectory(workdir, ref_dir)


def test_sigterm_saves_and_exits_cleanly_then_resumes(reference, tmp_path):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "run")
  process = signal_when_saved(workdir, "student", signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 75, err[-3000:]
  assert "Traceback" not in err
  message = [line for line in err.splitlines() if line.startswith("kdjax: error:")]
  assert len(message) == 1 and "preempted" in message[0] and "resume" in message[0]
  run = "student" if "run 'student'" in message[0] else "student_kd"
  step = int(message[0].split(" at step ")[1].split(";")[0])
  assert os.path.isdir(os.path.join(workdir, run, "checkpoints", str(step), "state"))
  assert run not in train.read_results(workdir)

  results = train.train_and_evaluate(tiny(), workdir)
  assert_same_results(results, ref_results)
  assert_same_trajectory(workdir, ref_dir)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(reference, tmp_path, caplog):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  # The distilled run lost its results entry and its last checkpoint is damaged.
  results = train.read_results(workdir)
  del results["student_kd"]
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)
  last = os.path.join(workdir, "student_kd", "checkpoints", "40", "state")
  for name in os.listdir(last):
    if os.path.isfile(os.path.join(last, name)):
      with open(os.path.join(last, name), "w") as f:
        f.write("not a checkpoint")

  with caplog.at_level("WARNING"):
    results = train.train_and_evaluate(tiny(), workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any("cannot be read" in w and "resuming from step 30" in w for w in warnings), warnings
  ckpts = os.listdir(os.path.join(workdir, "student_kd", "checkpoints"))
  assert any(n.startswith("corrupt-40-") for n in ckpts)  # moved aside, not deleted
  assert "40" in ckpts  # written again by the resumed run
  assert_same_results(results, ref_results)
  assert_same_trajectory(workdir, ref_dir, runs=("student_kd",))


def test_workdir_of_another_config_is_refused_and_kept(reference):
  workdir, _ = reference
  before = snapshot(workdir)
  with pytest.raises(train.WorkdirError) as error:
    train.train_and_evaluate(tiny(**{"optimizer.learning_rate": 0.2}), workdir)
  message = str(error.value)
  assert "optimizer.learning_rate: 0.05 -> 0.2" in message and "new --workdir" in message
  assert snapshot(workdir) == before
  # Runtime settings (logging, checkpoint cadence) may change on resume.
  train.train_and_evaluate(tiny(log_every=5, keep_checkpoints=3), workdir)
  assert snapshot(workdir) == before


def test_teacher_checkpoint_is_loaded_instead_of_trained(reference, tmp_path):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "run")
  config = tiny(**{"teacher.checkpoint": os.path.join(ref_dir, "teacher"),
                   "compare_baseline": False})
  results = train.train_and_evaluate(config, workdir)
  # Nothing trained: no checkpoints, only the predictions the report reads.
  assert os.listdir(os.path.join(workdir, "teacher")) == [contract.PREDICTIONS_FILE]
  assert results["teacher"]["accuracy"] == ref_results["teacher"]["accuracy"]
  assert set(results) == {"teacher", "student_kd"}
  assert_same_results({"student_kd": results["student_kd"]},
                      {"student_kd": ref_results["student_kd"]})


def test_tfds_dataset_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = tiny(**{"data.name": "tfds:mnist", "data.data_dir": str(tmp_path / "tfds"),
                   "data.eval_batch_size": 16, "teacher.model": "cnn_small",
                   "teacher.model_kwargs": {"width": 4}, "teacher.total_steps": 2,
                   "total_steps": 2, "eval_every": 0, "log_every": 1})
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=40):
    results = train.train_and_evaluate(config, workdir)
  assert set(results) == set(RUNS)
  for run in RUNS:
    assert results[run]["count"] == 40
    assert 0.0 <= results[run]["accuracy"] <= 1.0
    assert sorted(train_losses(workdir, run)) == [1, 2]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["data"]["eval_split"] == "test"


def test_pmap_mode_follows_the_jit_trajectory(reference, tmp_path):
  ref_dir, ref_results = reference
  config = tiny(**{"teacher.checkpoint": os.path.join(ref_dir, "teacher"),
                   "compare_baseline": False, "parallel": "pmap"})
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  got, want = train_losses(workdir, "student_kd"), train_losses(ref_dir, "student_kd")
  assert sorted(got) == sorted(want)
  # Same math, different reduction order across devices.
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-4)
  assert abs(results["student_kd"]["accuracy"] - ref_results["student_kd"]["accuracy"]) < 0.02


@pytest.mark.slow
def test_quickstart_distillation_beats_the_baseline(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(TINY_CONFIG_FILE), "..", "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.progress_bar = False
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["teacher"]["accuracy"] > 0.95
  assert results["student_kd"]["accuracy"] > results["student"]["accuracy"]

"""Bad input ends in one clear error that names the fix, and leaves the workdir as it was."""
import os

import pytest

from kdjax import data
from kdjax import train
from tests import helpers
from tests.train.conftest import snapshot, tiny

SENTINEL = "keep-me.txt"


@pytest.fixture(name="workdir")
def fixture_workdir(tmp_path):
  """A workdir that already holds a file: a failing run must leave it exactly as it was."""
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / SENTINEL).write_text("earlier work")
  before = snapshot(workdir)
  yield str(workdir)
  assert snapshot(workdir) == before


@pytest.fixture(name="no_network")
def fixture_no_network(monkeypatch):
  """Any connection attempt or host lookup fails at once; a hang is cut after 60 s."""
  with helpers.no_network(monkeypatch) as attempts:
    yield attempts


@pytest.mark.parametrize("overrides, error, fix", [
    ({"optimiser": {"name": "sgd"}}, train.ConfigError, "did you mean 'optimizer'"),
    ({"student.model": "resnet_nope"}, train.ConfigError, "config.student.model="),
    ({"teacher.model": "not_a_model"}, train.ConfigError, "config.teacher.model="),
    ({"data.name": "no_such_dataset"}, data.DataError, "available: digits"),
    ({"student.num_classes": 100}, train.ConfigError, "set config.student.num_classes=10"),
    ({"teacher.num_classes": 5}, train.ConfigError, "set config.teacher.num_classes=10"),
    ({"objective.kd.temperature": 0.0}, train.ConfigError,
     "config.objective.kd.temperature must be > 0"),
    ({"objective.kd.temperature": -2.0}, train.ConfigError, "e.g. 4.0"),
    ({"objective.ce.weight": -0.1}, train.ConfigError, "config.objective.ce.weight must be"),
    ({"objective.kd.kind": "kd_nope"}, train.ConfigError, "is not a kdjax objective term"),
    ({"objective.kd.temprature": 2.0}, train.ConfigError, "did you mean 'temperature'"),
    ({"batch_size": 12}, train.ConfigError, "multiple of 8"),
    ({"batch_size": 16, "accumulation_steps": 4}, train.ConfigError, "multiple of 32"),
    ({"data.eval_batch_size": 100}, train.ConfigError, "multiple of 8"),
    ({"optimizer.name": "adamax"}, train.ConfigError, "config.optimizer.name="),
    ({"optimizer.learning_rate": -1.0}, train.ConfigError, "learning_rate must be a positive"),
    ({"optimizer.schedule": "step"}, train.ConfigError, "decay_steps"),
    ({"parallel": "pjit"}, train.ConfigError, "'jit'"),
    ({"mesh": {"data": 3, "fsdp": 1}}, train.ConfigError, "config.parallel / config.mesh"),
    ({"data.eval_split": "validation"}, train.ConfigError, "its splits are"),
])
def test_bad_config_values(workdir, overrides, error, fix):
  config = tiny()
  for key, value in overrides.items():
    if "." not in key and key not in config:
      config = config.to_dict()
      config[key] = value
      continue
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with config.unlocked():  # As a config file replacing a whole mapping would.
      node[leaf] = value
  with pytest.raises(error) as caught:
    train.train_and_evaluate(config, workdir)
  assert fix in str(caught.value)


def test_workdir_not_writable(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(train.WorkdirError, match="cannot write to --workdir=.*writable"):
    train.train_and_evaluate(tiny(), str(blocker / "workdir"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_workdir_read_only(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o500)
  with pytest.raises(train.WorkdirError, match="cannot write"):
    train.train_and_evaluate(tiny(), str(read_only))


def test_teacher_checkpoint_missing(workdir, tmp_path):
  with pytest.raises(train.CheckpointError) as caught:
    train.train_and_evaluate(tiny(**{"teacher.checkpoint": str(tmp_path / "nope")}), workdir)
  assert "does not exist" in str(caught.value) and "teacher.checkpoint" in str(caught.value)


def test_teacher_checkpoint_unreadable(workdir, tmp_path):
  bad = tmp_path / "teacher" / "checkpoints" / "20" / "state"
  bad.mkdir(parents=True)
  (bad / "_METADATA").write_text("garbage")
  with pytest.raises(train.CheckpointError) as caught:
    train.train_and_evaluate(tiny(**{"teacher.checkpoint": str(tmp_path / "teacher")}), workdir)
  assert "cannot read the checkpoint" in str(caught.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(train.CheckpointError, match="is a directory but not an Orbax checkpoint"):
    train.train_and_evaluate(tiny(**{"teacher.checkpoint": str(empty)}), workdir)


def test_teacher_checkpoint_of_another_architecture(reference, tmp_path):
  ref_dir, _ = reference
  config = tiny(**{"teacher.checkpoint": os.path.join(ref_dir, "teacher"),
                   "teacher.model_kwargs": {"hidden": (32,)}})
  workdir = str(tmp_path / "run")
  with pytest.raises(train.CheckpointError, match="does not match config.teacher.model .*kernel"):
    train.train_and_evaluate(config, workdir)
  assert "student_kd" not in train.read_results(workdir)


def test_tfds_dataset_not_prepared_without_network(workdir, tmp_path, no_network):
  config = tiny(**{"data.name": "tfds:mnist", "data.data_dir": str(tmp_path / "tfds")})
  with pytest.raises(data.DatasetNotPreparedError) as caught:
    train.train_and_evaluate(config, workdir)
  assert "tfds build mnist" in str(caught.value) and "config.data.data_dir" in str(caught.value)
  assert not no_network


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny(**{"teacher.optimizer.learning_rate": 1e30, "teacher.optimizer.name": "sgd",
                   "checkpoint_every": 1, "log_every": 50, "teacher.total_steps": 20})
  with pytest.raises(train.NonFiniteLossError) as caught:
    train.train_and_evaluate(config, workdir)
  error = caught.value
  assert error.run == "teacher" and 1 < error.step <= 20
  assert f"at step {error.step}" in str(error)
  assert "learning_rate" in str(error) and "new --workdir" in str(error)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "teacher", "checkpoints"))
                 if s.isdigit())
  assert steps and steps[-1] < error.step
  assert f"last good checkpoint, step {steps[-1]}" in str(error)
  assert "teacher" not in train.read_results(workdir)


def test_a_student_that_cannot_be_built_fails_before_the_teacher_trains(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(train.ConfigError, match="config.student.model_kwargs") as caught:
    train.train_and_evaluate(tiny(**{"student.model": "cnn_small"}), str(workdir))
  assert "hidden" in str(caught.value) and "\n" not in str(caught.value)
  # Checked before anything was written: no teacher run, no config.json, nothing to refuse.
  assert not workdir.exists() or not any(workdir.iterdir())
  train.train_and_evaluate(tiny(**{"total_steps": 2, "teacher.total_steps": 2,
                                   "checkpoint_every": 2, "eval_every": 0}), str(workdir))


def test_checked_first_steps_stop_a_diverging_run_naming_the_step(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny(**{"teacher.optimizer.learning_rate": 1e30, "teacher.optimizer.name": "sgd",
                   "checkpoint_every": 1, "teacher.total_steps": 20,
                   "checked_steps": 20})
  with pytest.raises(train.NonFiniteLossError) as caught:
    train.train_and_evaluate(config, workdir)
  error = caught.value
  assert error.run == "teacher" and 1 < error.step <= 20
  assert "not finite" in str(error) and f"at step {error.step}" in str(error)
  assert "\n" not in str(error) and "teacher" not in train.read_results(workdir)

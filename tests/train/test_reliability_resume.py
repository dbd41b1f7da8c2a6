"""Reliability through the command line, with processes killed and disks filled (slow)."""
import os
import shutil
import subprocess
import time

import pytest

from kdjax import train
from kdjax import workdir as contract
from tests.train.conftest import TINY_CONFIG_FILE, cli, kill_when, tiny

pytestmark = pytest.mark.slow


def _error_line(err):
  lines = [line for line in err.splitlines() if line.startswith("kdjax: error: ")]
  assert len(lines) == 1, err
  assert "Traceback" not in err, err
  return lines[0][len("kdjax: error: "):]


def test_a_teacher_swapped_between_a_kill_and_the_resume_is_refused(tmp_path):
  teachers = []
  for seed in (0, 1):
    workdir = str(tmp_path / f"teacher_{seed}")
    train.train_and_evaluate(tiny(**{"teacher_only": True, "seed": seed,
                                     "logging.tensorboard": False}), workdir)
    teachers.append(contract.run_dir(workdir, "teacher"))
  teacher = str(tmp_path / "teacher")  # The path the config names; its contents change.
  shutil.copytree(teachers[0], teacher)
  workdir = str(tmp_path / "w")
  args = (f"--config={TINY_CONFIG_FILE}", f"--config.teacher.checkpoint={teacher}",
          "--config.compare_baseline=False", f"--workdir={workdir}")
  kill_when(os.path.join(contract.checkpoint_dir(workdir, "student_kd"), "10"), *args)
  assert not os.path.exists(os.path.join(workdir, contract.RESULTS_FILE)) or (
      "student_kd" not in train.read_results(workdir))

  shutil.rmtree(teacher)
  shutil.copytree(teachers[1], teacher)
  process = cli(*args)
  _, err = process.communicate(timeout=600)
  assert process.returncode == 1, err
  message = _error_line(err)
  assert message.startswith(f"run 'student_kd' in --workdir={workdir} was started from other "
                            "inputs than it has now: the model of run 'teacher'"), message
  assert "restore the original inputs and rerun to resume" in message
  assert "use a new --workdir" in message

  shutil.rmtree(teacher)
  shutil.copytree(teachers[0], teacher)  # Restored: the run resumes and finishes.
  process = cli(*args)
  _, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  assert "student_kd" in train.read_results(workdir)


@pytest.fixture(name="disk")
def fixture_disk(tmp_path):
  """A 16 MiB tmpfs mounted for the test (root only)."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  mount = str(tmp_path / "disk")
  os.makedirs(mount)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount],
                        capture_output=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
  yield mount
  subprocess.run(["umount", "-l", mount], check=False)


def _fill(directory):
  """Writes a file into ``directory`` until its file system is full; returns its path."""
  path = os.path.join(directory, "filler")
  block = b"\0" * 65536
  with open(path, "wb") as f:
    try:
      while True:
        f.write(block)
        f.flush()
    except OSError:
      pass
  return path


def test_a_disk_that_fills_during_training_stops_in_seconds(disk):
  workdir = os.path.join(disk, "w")
  args = (f"--config={TINY_CONFIG_FILE}", "--config.teacher_only=True",
          "--config.teacher.total_steps=400", "--config.log_every=5", "--config.eval_every=50",
          f"--workdir={workdir}")
  process = cli(*args)
  first = os.path.join(contract.checkpoint_dir(workdir, "teacher"), "10")
  while not os.path.isdir(first):
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.01)
  filler = _fill(disk)
  filled = time.monotonic()
  try:
    _, err = process.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    process.kill()
    pytest.fail(f"the run hung on a full disk: {process.communicate()[1][-3000:]}")
  took = time.monotonic() - filled
  assert process.returncode == 1, err
  message = _error_line(err)
  assert message.startswith("no space left on device while writing "), message
  assert message.endswith("; free space and rerun the same command to resume")
  for noise in ("Failed to run", "Event loop is closed", "Save Finalize", "background thread"):
    assert noise not in err, err
  assert took < 60, f"stopped {took:.0f} s after the disk filled"
  assert not os.path.exists(os.path.join(workdir, "kdjax.lock"))  # The lock was released.

  os.remove(filler)  # Earlier checkpoints are intact: the same command resumes from them.
  steps = sorted(int(s) for s in os.listdir(contract.checkpoint_dir(workdir, "teacher"))
                 if s.isdigit())
  assert steps and steps[0] >= 10
  process = cli(*args)
  _, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  assert "teacher" in train.read_results(workdir)


def _cached_teacher_settings(cache_dir, steps):
  """Teacher and student_kd of ``steps`` updates each, the teacher cached under ``cache_dir``."""
  return {"compare_baseline": False, "total_steps": steps, "teacher.total_steps": steps,
          "eval_every": 0, "checkpoint_every": steps, "logging.tensorboard": False,
          "teacher_cache.enabled": True, "teacher_cache.replay_epochs": 1,
          "teacher_cache.dir": cache_dir}


def test_two_workdirs_sharing_a_teacher_cache_dir_keep_both_caches(tmp_path):
  shared = str(tmp_path / "caches")
  settings = _cached_teacher_settings(shared, steps=2)
  metas = {}
  for seed in (0, 1):  # Two teachers (other seeds), one cache directory.
    train.train_and_evaluate(tiny(seed=seed, **settings), str(tmp_path / f"w{seed}"))
    keyed = sorted(os.listdir(os.path.join(shared, "teacher")))
    metas[seed] = keyed
  assert len(metas[0]) == 1 and len(metas[1]) == 2, metas
  for key in metas[1]:
    directory = os.path.join(shared, "teacher", key)
    assert sorted(os.listdir(directory)) == ["meta.json", "values.npy"], directory
  # The first workdir's cache was not replaced: its run finds it again.
  results = train.train_and_evaluate(tiny(seed=0, **settings), str(tmp_path / "w0"))
  assert "student_kd" in results
  assert sorted(os.listdir(os.path.join(shared, "teacher"))) == metas[1]


def test_a_cache_overwritten_with_noise_is_refused_or_rebuilt_by_the_run(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from kdjax.train.errors import ConfigError  # pylint: disable=g-import-not-at-top
  shared = str(tmp_path / "caches")
  settings = _cached_teacher_settings(shared, steps=4)
  first = train.train_and_evaluate(tiny(**settings), str(tmp_path / "w0"))
  (key,) = os.listdir(os.path.join(shared, "teacher"))
  values = os.path.join(shared, "teacher", key, "values.npy")
  good = np.load(values)
  np.save(values, np.random.default_rng(0).standard_normal(good.shape).astype(good.dtype))
  again = {**settings, "teacher.checkpoint": str(tmp_path / "w0" / "teacher")}
  with pytest.raises(ConfigError, match="is corrupt: values.npy"):
    train.train_and_evaluate(tiny(**again, **{"teacher_cache.on_stale": "error"}),
                             str(tmp_path / "w1"))
  second = train.train_and_evaluate(tiny(**again), str(tmp_path / "w2"))  # Rebuilt.
  np.testing.assert_array_equal(np.load(values), good)
  assert second["student_kd"]["accuracy"] == first["student_kd"]["accuracy"]

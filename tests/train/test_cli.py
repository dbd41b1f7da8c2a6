"""The command line: one message and a non-zero exit for what the user must fix."""

import pytest

from tests.train.conftest import TINY_CONFIG_FILE, cli


def run_cli(*args):
  process = cli(*args)
  out, err = process.communicate(timeout=120)
  return process.returncode, out, err


def error_line(err):
  lines = [line for line in err.splitlines() if line.startswith("kdjax: error:")]
  assert len(lines) == 1, err
  assert "Traceback" not in err, err
  return lines[0]


@pytest.mark.parametrize("config_arg, fix", [
    ("--config=configs/does_not_exist.py", "does not exist"),
    ("--config=SYNTAX", "SyntaxError"),
    ("UNKNOWN_KEY", "the config has no key 'optimizer.learning_rat'"),
])
def test_cli_bad_config(tmp_path, config_arg, fix):
  args = [config_arg]
  if config_arg == "--config=SYNTAX":
    bad = tmp_path / "bad_config.py"
    bad.write_text("def get_config(:\n  pass\n")
    args = [f"--config={bad}"]
  elif config_arg == "UNKNOWN_KEY":
    args = [f"--config={TINY_CONFIG_FILE}", "--config.optimizer.learning_rat=0.1"]
  workdir = tmp_path / "workdir"
  code, _, err = run_cli(*args, f"--workdir={workdir}")
  assert code == 1
  assert fix in error_line(err)
  assert not workdir.exists()


def test_cli_user_error_from_the_pipeline(tmp_path):
  workdir = tmp_path / "workdir"
  code, _, err = run_cli(f"--config={TINY_CONFIG_FILE}", "--config.objective.kd.temperature=-1",
                         f"--workdir={workdir}")
  assert code == 1
  assert "config.objective.kd.temperature must be > 0" in error_line(err)
  assert not workdir.exists()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # one task: a plain process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM"),
    ({"SLURM_NTASKS": "4"}, None),  # not inside a SLURM job
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "Cloud TPU"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "n/a"}, None),
])
def test_multi_process_launchers_are_detected(environ, expected):
  from kdjax import main  # pylint: disable=g-import-not-at-top
  assert main.detected_cluster(environ) == expected

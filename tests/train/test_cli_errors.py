"""The command line: one ``kdjax: error:`` line per failure, tracebacks only with --verbose."""
import errno
import logging
import os
import signal
import sys
import time

import pytest

from kdjax import main
from kdjax.train import config_errors
from kdjax.train import describe
from kdjax.train import quiet
from kdjax import train
from tests.train.conftest import TINY_CONFIG_FILE, cli

NO_SPACE = ("no space left on device while writing {}; free space and rerun the same command to "
            "resume")


def _error_lines(err):
  lines = [line for line in err.splitlines() if line.startswith("kdjax: error:")]
  assert len(lines) == 1, err
  assert "Traceback" not in err, err
  return lines[0][len("kdjax: error: "):]


# --- Messages (no process started) ---------------------------------------------------------


@pytest.mark.parametrize("exc, path", [
    (OSError(errno.ENOSPC, "No space left on device", "/w/teacher/metrics.jsonl"),
     "/w/teacher/metrics.jsonl"),
    (OSError(errno.ENOSPC, "No space left on device"), "/w"),
    (ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/teacher/checkpoints/20.orbax-'
                'checkpoint-tmp/state/d/0": [OS error 28: No space left on device]'),
     "/w/teacher/checkpoints/20.orbax-checkpoint-tmp/state/d/0"),
    (RuntimeError("RESOURCE_EXHAUSTED: Error writing file ocdbt manifest"), "/w"),
])
def test_full_disk_is_one_line(exc, path):
  assert describe.describe_unexpected(exc, "/w") == NO_SPACE.format(path)


def test_device_memory_is_not_a_full_disk():
  exc = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.")
  assert describe.disk_full_path(exc, "/w") is None
  assert "out of accelerator memory" in describe.describe_unexpected(exc, "/w")


def test_other_errors_point_to_verbose():
  message = describe.describe_unexpected(ZeroDivisionError("division by zero\nmore"), "/w")
  assert message.startswith("unexpected ZeroDivisionError: division by zero; rerun with --verbose")


def test_config_type_error_names_key_value_and_types():
  text = ("Traceback (most recent call last):\n"
          '  File "/cfg/my_config.py", line 7, in get_config\n'
          "TypeError: Could not override field 'batch_size' (reference). 64 is of original type "
          "<class 'str'> and cannot be casted to type <class 'int'>")
  assert config_errors.config_type_error(text, "/cfg/my_config.py") == (
      "--config=/cfg/my_config.py: config key 'batch_size' must be of type int, got '64' of type "
      "str (my_config.py, line 7); set it to an int value (e.g. no quotes around a number)")
  assert config_errors.config_type_error("something else", "c.py") is None


def test_log_records_lose_their_tracebacks():
  one_line = quiet._OneLine()  # pylint: disable=protected-access
  try:
    raise ValueError("boom")
  except ValueError:
    record = logging.LogRecord("absl", logging.ERROR, __file__, 1, "save failed: %s", ("x",),
                               sys.exc_info())
  assert one_line.filter(record) and record.getMessage() == "save failed: x"
  assert record.exc_info is None
  disk = logging.LogRecord("absl", logging.ERROR, __file__, 1,
                           "RESOURCE_EXHAUSTED: [OS error 28: No space left on device]", (), None)
  assert not one_line.filter(disk)  # Left to the final error line.
  warning = logging.LogRecord("absl", logging.WARNING, __file__, 1, "a warning", (), None)
  assert one_line.filter(warning) and warning.getMessage() == "a warning"


# --- The exit path of main(), in this process ------------------------------------------------


@pytest.fixture(name="run_main")
def fixture_run_main(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(quiet, "quiet_background_tracebacks", lambda: None)

  def run(error, *flags):
    def fail(config, workdir):
      del config, workdir
      raise error
    monkeypatch.setattr(train, "train_and_evaluate", fail)
    main.FLAGS.unparse_flags()
    main.FLAGS(["kdjax", f"--config={TINY_CONFIG_FILE}", f"--workdir={tmp_path / 'w'}", *flags])
    try:
      with pytest.raises(SystemExit) as info:
        main.main(["kdjax"])
    finally:
      main.FLAGS.unparse_flags()
    return info.value.code, capsys.readouterr().err

  return run


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 75)])
def test_preempted_exit_status(run_main, signum, code):
  message = ("run 'student' stopped by SIGINT at step 7; a checkpoint was saved in W/7; run the "
             "same command again to resume")
  status, err = run_main(train.Preempted(message, run="student", step=7, signum=signum))
  assert status == code
  assert _error_lines(err) == message


def test_keyboard_interrupt_exits_130(run_main, tmp_path):
  status, err = run_main(KeyboardInterrupt())
  assert status == 130
  line = _error_lines(err)
  assert "interrupted (Ctrl-C)" in line and "run the same command again to resume" in line
  assert str(tmp_path / "w") in line


def test_full_disk_exit(run_main):
  status, err = run_main(OSError(errno.ENOSPC, "No space left on device", "/x/metrics.jsonl"))
  assert status == 1
  assert _error_lines(err) == NO_SPACE.format("/x/metrics.jsonl")


def test_train_error_caused_by_a_full_disk(run_main):
  error = train.CheckpointError("cannot save the checkpoint of step 20")
  error.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/x/ckpt/20")
  status, err = run_main(error)
  assert status == 1 and _error_lines(err) == NO_SPACE.format("/x/ckpt/20")


def test_traceback_only_with_verbose(run_main):
  status, err = run_main(RuntimeError("kaboom"))
  assert status == 1 and _error_lines(err).startswith("unexpected RuntimeError: kaboom")
  status, err = run_main(RuntimeError("kaboom"), "--verbose")
  assert status == 1 and "Traceback (most recent call last)" in err
  assert err.strip().splitlines()[-1].startswith("kdjax: error: unexpected RuntimeError")


def test_multi_line_train_errors_become_one_line(run_main):
  status, err = run_main(train.ConfigError("the workdir holds another config:\n  seed: 0 -> 1"))
  assert status == 1
  assert _error_lines(err) == "the workdir holds another config: seed: 0 -> 1"


# --- Real processes ----------------------------------------------------------------------------


def _communicate(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("body, expected", [
    ("  config = base_config()\n  config.batch_size = '64'\n  return config\n",
     "config key 'batch_size' must be of type int, got '64' of type str (bad_config.py, line 6)"),
    (None, "does not define get_config()"),
])
def test_config_file_errors(tmp_path, body, expected):
  path = tmp_path / "bad_config.py"
  if body is None:
    path.write_text("from kdjax.train.config import base_config\n\n\ndef make_config():\n"
                    "  return base_config()\n")
  else:
    path.write_text("from kdjax.train.config import base_config\n\n\ndef get_config():\n" + body)
  code, _, err = _communicate(cli(f"--config={path}", f"--workdir={tmp_path / 'w'}"))
  assert code == 1
  assert expected in _error_lines(err)
  assert not (tmp_path / "w").exists()


def test_subcommand_without_its_module(monkeypatch, capsys):
  monkeypatch.setitem(main.SUBCOMMANDS, "export", "kdjax.no_such_module")
  with pytest.raises(SystemExit) as info:
    main.run(["kdjax", "export", "W"])
  assert info.value.code == 1
  assert "'kdjax export' is not available" in _error_lines(capsys.readouterr().err)


@pytest.mark.slow
def test_report_subcommand_errors_are_one_line(tmp_path):
  code, _, err = _communicate(cli("report", str(tmp_path / "nothing")))
  assert code == 1 and "not a directory" in _error_lines(err)


def _wait_for(path, process, timeout=300):
  start = time.monotonic()
  while not os.path.exists(path):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() - start < timeout, f"{path} never appeared"
    time.sleep(0.1)


@pytest.mark.slow
def test_second_run_on_a_workdir_is_refused_and_the_first_finishes(tmp_path):
  workdir = tmp_path / "w"
  first = cli(f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}")
  _wait_for(workdir / "kdjax.lock", first)
  start = time.monotonic()
  code, _, err = _communicate(cli(f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}"))
  assert code == 1 and time.monotonic() - start < 120
  line = _error_lines(err)
  assert "in use by another kdjax run" in line and f"PID {first.pid}" in line
  code, _, err = _communicate(first)
  assert code == 0, err
  assert not (workdir / "kdjax.lock").exists()


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130_then_resumes(tmp_path):
  workdir = tmp_path / "w"
  process = cli(f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}")
  _wait_for(workdir / "teacher" / "metrics.jsonl", process)
  process.send_signal(signal.SIGINT)
  code, _, err = _communicate(process)
  assert code == 130, err
  line = _error_lines(err)
  assert "SIGINT" in line and "run the same command again to resume" in line
  code, _, err = _communicate(cli(f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}"))
  assert code == 0, err

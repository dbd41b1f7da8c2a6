"""kdjax.train.describe: the one line and the exit status of each way a run can end."""
import errno
import signal

import pytest

from kdjax import data
from kdjax.train import describe
from kdjax.train.errors import CheckFailed, ConfigError, Preempted


def test_kdjax_errors_keep_their_message_on_one_line():
  assert describe.describe(ConfigError("config.x=1 is bad; set it to 2"), "/w") == (
      "config.x=1 is bad; set it to 2")
  assert describe.describe(data.DataError("dataset 'x'\n  is not there"), "/w") == (
      "dataset 'x' is not there")
  failed = CheckFailed("batch['label'] holds the label 99", run="student", step=3)
  assert describe.describe(failed, "/w") == (
      "run 'student', step 3: batch['label'] holds the label 99")


@pytest.mark.parametrize("wrapper, describe_fn, path", [
    (ConfigError("could not save"), describe.describe, "/w/student/metrics.jsonl"),
    (RuntimeError("async save failed"), describe.describe_unexpected, "/w/results.json"),
])
def test_a_full_disk_behind_another_error_is_named(wrapper, describe_fn, path):
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", path)
    except OSError as e:
      raise wrapper from e
  except type(wrapper) as e:
    assert describe_fn(e, "/w") == (
        f"no space left on device while writing {path}; free space and rerun the same command "
        "to resume")


def test_exit_status():
  sigterm = Preempted("preempted", run="r", step=1, signum=signal.SIGTERM)
  sigint = Preempted("interrupted", run="r", step=1, signum=signal.SIGINT)
  assert describe.exit_status(sigterm) == 75 and describe.exit_status(sigint) == 130
  assert describe.exit_status(KeyboardInterrupt()) == 130
  assert describe.exit_status(ValueError("x")) == 1
  assert "run the same command again to resume" in describe.describe(KeyboardInterrupt(), "/w")



# --- Missing optional packages --------------------------------------------------------------


def test_a_missing_extra_is_named_as_such():
  error = ModuleNotFoundError("No module named 'onnx'", name="onnx")
  message = describe.describe_unexpected(error, "/w")
  assert message.startswith("the package 'onnx' is not installed (import onnx failed); ")
  if describe.extra_for("onnx") == "deploy":  # Needs kdjax's installed metadata.
    assert 'pip install -e ".[deploy]"' in message
  assert "report it if it is a bug" not in message
  # kdjax's own ImportError already names the extra: kept as it is.
  own = ImportError('quantization needs qwix: pip install -e ".[deploy]"')
  assert describe.describe_unexpected(RuntimeError("x"), "/w").startswith("unexpected")
  wrapped = RuntimeError("export failed")
  wrapped.__cause__ = own
  assert describe.describe_unexpected(wrapped, "/w") == (
      'quantization needs qwix: pip install -e ".[deploy]"')
  assert describe.missing_package(ValueError("x")) is None


def test_a_subcommand_that_cannot_import():
  assert describe.describe_subcommand_import(
      "export", "kdjax.nothing", ModuleNotFoundError("x", name="kdjax.nothing")).startswith(
          "'kdjax export' is not available")
  message = describe.describe_subcommand_import(
      "export", "kdjax.train.export_command", ModuleNotFoundError("x", name="jax2onnx"))
  assert message.startswith("'kdjax export' needs more: the package 'jax2onnx' is not installed")

"""kdjax.train.describe: the one line and the exit status of each way a run can end."""
import errno
import os
import signal
import traceback

from absl import flags
from ml_collections import config_flags
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


def test_flag_errors():
  argv = ["kdjax", "--config=c.py", "--config.batch_sise=3"]
  message = describe.describe_flags_error(
      AttributeError("'batch_sise' not found. Did you mean \"batch_size\""), argv)
  assert message.startswith("--config.batch_sise: the config has no key 'batch_sise' "
                            "(did you mean 'batch_size'?)")
  assert "nearest valid keys: batch_size" in message
  assert describe.describe_flags_error(AttributeError("module has no get_config"), argv) == (
      "--config=c.py does not define get_config(); a config file must define get_config() "
      "returning an ml_collections.ConfigDict (see configs/quickstart.py)")
  assert describe.describe_flags_error(flags.Error("flag --x: bad"), argv) == (
      "flag --x: bad (see --help; config keys are listed in docs/training.md)")
  missing = describe.describe_config_file_error(ValueError("x"), ["kdjax", "--config=/no/x.py"])
  assert missing.startswith("config file '/no/x.py' does not exist")


# --- Errors of the config file itself (parsed exactly as `kdjax` parses --config) ------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags_error(*args):
  """The one line `kdjax` prints for these arguments (a fresh flag registry, like the CLI's)."""
  argv = ["kdjax", *args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    fv(argv)
  except Exception as e:  # pylint: disable=broad-except
    return describe.describe_flags_error(e, argv, traceback.format_exc())
  finally:
    os.chdir(cwd)
  raise AssertionError(f"{args} parsed without an error")


def _config_file(tmp_path, body):
  path = tmp_path / "my_config.py"
  path.write_text("from kdjax.train import base_config\n\n\ndef get_config():\n"
                  "  config = base_config()\n" + body + "  return config\n")
  return str(path)


def test_an_error_raised_by_get_config_keeps_its_message():
  message = _flags_error("--config=configs/cifar100/dkd.py:res32x4_res8x4")
  assert message.startswith("--config=configs/cifar100/dkd.py:res32x4_res8x4: unknown CIFAR-100 "
                            "pair 'res32x4_res8x4'; pass one of resnet32x4-resnet8x4")
  assert "Error whilst parsing" not in message and "\n" not in message


def test_an_argument_to_a_config_without_one():
  assert _flags_error("--config=configs/quickstart.py:foo") == (
      "--config=configs/quickstart.py:foo: the get_config() of configs/quickstart.py takes no "
      "argument; drop ':foo' (an argument after ':' is for configs whose get_config takes one, "
      "e.g. --config=configs/cifar100/kd.py:resnet32x4-resnet8x4)")


@pytest.mark.parametrize("body, expected", [
    ("  config.optimizer.lr = 0.1\n",
     "{path}, line 6: the config has no key 'optimizer.lr' (did you mean "
     "'optimizer.learning_rate'?); nearest valid keys: optimizer.learning_rate, "
     "teacher.optimizer.learning_rate (every key is listed in docs/training.md)"),
    ("  config.seed = undefined_name\n",
     "cannot load --config={path}: NameError: name 'undefined_name' is not defined "
     "(my_config.py, line 6); fix the config file (it must define get_config() returning an "
     "ml_collections.ConfigDict)"),
])
def test_an_error_in_a_config_file_names_file_and_line(tmp_path, body, expected):
  path = _config_file(tmp_path, body)
  assert _flags_error(f"--config={path}") == expected.format(path=path)


def test_a_config_file_setting_an_unknown_key_names_key_file_and_nearest(tmp_path):
  # Through a local variable, and a misspelt section read rather than set.
  path = _config_file(tmp_path, "  opt = config.optimizer\n  opt.wd = 0.1\n")
  assert "the config has no key 'optimizer.wd' (did you mean 'optimizer.weight_decay'?)" in (
      _flags_error(f"--config={path}"))
  path = _config_file(tmp_path, "  config.optimiser.name = 'sgd'\n")
  assert _flags_error(f"--config={path}").startswith(
      f"{path}, line 6: the config has no key 'optimiser' (did you mean 'optimizer'?)")


def test_removed_keys_say_what_replaced_them(tmp_path):
  hint = "config.checks was removed; set config.checked_steps=0"
  path = _config_file(tmp_path, "  config.checks = False\n")
  assert _flags_error(f"--config={path}") == f"{path}, line 6: {hint} to turn the checked " + (
      "first steps off (it is the only switch now)")
  assert _flags_error("--config=tests/train/tiny_config.py", "--config.checks=False").startswith(
      "--config.checks: " + hint)


def test_an_unknown_override_names_the_nearest_keys():
  message = _flags_error("--config=tests/train/tiny_config.py", "--config.optimizer.lr=0.1")
  assert message.startswith("--config.optimizer.lr: the config has no key 'optimizer.lr' (did you "
                            "mean 'optimizer.learning_rate'?)")


@pytest.mark.parametrize("path, expected", [
    ("optimizer.lr", ["optimizer.learning_rate", "teacher.optimizer.learning_rate"]),
    ("optimiser", ["optimizer", "teacher.optimizer"]),
    ("batch_sise", ["batch_size"]),
    ("data.agument", ["data.augment"]),
])
def test_nearest_keys(path, expected):
  assert describe.nearest_keys(path, describe.config_keys())[:len(expected)] == expected


def test_every_config_key_is_known():
  keys = describe.config_keys()
  assert {"optimizer", "optimizer.learning_rate", "compress.prune_begin", "export.formats",
          "teacher.optimizer.warmup_steps"} <= set(keys)


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


def test_library_warnings_are_quiet_without_verbose(monkeypatch):
  import logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(threading, "excepthook", threading.excepthook)
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  saved = [(l, list(l.filters), [(h, list(h.filters)) for h in l.handlers]) for l in loggers]
  onnx_ir, serde = logging.getLogger("onnx_ir"), logging.getLogger("onnx_ir.serde")
  level = onnx_ir.level
  try:
    onnx_ir.setLevel(logging.NOTSET)
    assert serde.isEnabledFor(logging.WARNING)
    describe.quiet_background_tracebacks()
    assert not serde.isEnabledFor(logging.WARNING) and serde.isEnabledFor(logging.ERROR)
  finally:
    onnx_ir.setLevel(level)
    for logger, filters, handlers in saved:
      logger.filters[:] = filters
      for handler, handler_filters in handlers:
        handler.filters[:] = handler_filters

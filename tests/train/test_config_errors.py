"""kdjax.train.config_errors: the one line for a --config file or flag that did not load."""
import os
import traceback

from absl import flags
from ml_collections import config_flags
import pytest

from kdjax.train import config_errors


def test_flag_errors():
  argv = ["kdjax", "--config=c.py", "--config.batch_sise=3"]
  message = config_errors.describe_flags_error(
      AttributeError("'batch_sise' not found. Did you mean \"batch_size\""), argv)
  assert message.startswith("--config.batch_sise: the config has no key 'batch_sise' "
                            "(did you mean 'batch_size'?)")
  assert "nearest valid keys: batch_size" in message
  assert config_errors.describe_flags_error(AttributeError("module has no get_config"), argv) == (
      "--config=c.py does not define get_config(); a config file must define get_config() "
      "returning an ml_collections.ConfigDict (see configs/quickstart.py)")
  assert config_errors.describe_flags_error(flags.Error("flag --x: bad"), argv) == (
      "flag --x: bad (see --help; config keys are listed in docs/training.md)")
  missing = config_errors.describe_config_file_error(ValueError("x"),
                                                     ["kdjax", "--config=/no/x.py"])
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
    return config_errors.describe_flags_error(e, argv, traceback.format_exc())
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
  assert config_errors.nearest_keys(path, config_errors.config_keys())[:len(expected)] == expected


def test_every_config_key_is_known():
  keys = config_errors.config_keys()
  assert {"optimizer", "optimizer.learning_rate", "compress.prune_begin", "export.formats",
          "teacher.optimizer.warmup_steps"} <= set(keys)

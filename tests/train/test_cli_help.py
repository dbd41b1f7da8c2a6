"""``kdjax --help``: usage, the flags, every subcommand with an example; the end of a run names
the next command."""
import os
import shutil
import subprocess
import sys

import pytest

from kdjax import main
from kdjax import train
from kdjax.train import quiet
from tests.train.conftest import REPO, TINY_CONFIG_FILE, cli_env


def _help(capsys, *args):
  with pytest.raises(SystemExit) as info:
    main.run(["kdjax", *args])
  return info.value.code, capsys.readouterr().out


def _check_usage(text):
  assert text.startswith("usage: kdjax --config=CONFIG.py")
  for flag in ("--config", "--workdir", "--smoke", "--verbose", "--config.KEY=VALUE"):
    assert flag in text, flag
  # Every subcommand, each with an example command line.
  for name in main.SUBCOMMANDS:
    assert any(line.strip().startswith(f"kdjax {name} ") for line in text.splitlines()), name
  assert "kdjax --config=configs/quickstart.py --workdir=" in text
  assert "Try --helpfull" not in text


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_shows_usage_flags_and_subcommands(capsys, flag):
  code, out = _help(capsys, flag)
  assert code == 0
  _check_usage(out)


def test_help_after_other_flags(capsys):
  code, out = _help(capsys, "--config=configs/quickstart.py", "--help")
  assert code == 0 and out.startswith("usage: kdjax")


def test_no_arguments_print_the_usage_and_fail(capsys):
  code, out = _help(capsys)
  assert code == 1 and out.startswith("usage: kdjax")


def test_the_subcommands_are_dispatched():
  assert main.SUBCOMMANDS == {"report": "kdjax.report", "export": "kdjax.train.export_command",
                              "plan": "kdjax.plan"}
  import importlib  # pylint: disable=g-import-not-at-top
  for module in main.SUBCOMMANDS.values():
    assert callable(importlib.import_module(module).main), module


def test_a_run_ends_with_the_results_and_the_next_command(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(quiet, "quiet_background_tracebacks", lambda: None)
  results = {"teacher": {"accuracy": 0.9, "model": "mlp"}}
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: results)
  workdir = str(tmp_path / "w")
  main.FLAGS.unparse_flags()
  main.FLAGS(["kdjax", f"--config={TINY_CONFIG_FILE}", f"--workdir={workdir}"])
  try:
    main.main(["kdjax"])
  finally:
    main.FLAGS.unparse_flags()
  out = capsys.readouterr().out
  assert f"results: {workdir}/results.json" in out
  assert f"next: kdjax report {workdir}" in out


@pytest.mark.slow  # Starts Python processes (each imports JAX).
def test_help_from_the_command_line():
  out = subprocess.run([sys.executable, "-m", "kdjax.main", "--help"], env=cli_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  _check_usage(out.stdout)
  script = shutil.which("kdjax", path=os.path.dirname(sys.executable))
  if script is None:
    pytest.skip("the kdjax console script is not installed (pip install -e .)")
  out = subprocess.run([script, "--help"], env=cli_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  _check_usage(out.stdout)

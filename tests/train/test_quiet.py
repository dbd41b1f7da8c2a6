"""kdjax.train.quiet: background libraries kept to one line without --verbose."""
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from kdjax.train import quiet

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_library_warnings_are_quiet_without_verbose(monkeypatch):
  monkeypatch.setattr(threading, "excepthook", threading.excepthook)
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  saved = [(l, list(l.filters), [(h, list(h.filters)) for h in l.handlers]) for l in loggers]
  onnx_ir, serde = logging.getLogger("onnx_ir"), logging.getLogger("onnx_ir.serde")
  level = onnx_ir.level
  try:
    onnx_ir.setLevel(logging.NOTSET)
    assert serde.isEnabledFor(logging.WARNING)
    quiet.quiet_background_tracebacks()
    assert not serde.isEnabledFor(logging.WARNING) and serde.isEnabledFor(logging.ERROR)
  finally:
    onnx_ir.setLevel(level)
    for logger, filters, handlers in saved:
      logger.filters[:] = filters
      for handler, handler_filters in handlers:
        handler.filters[:] = handler_filters


@pytest.mark.parametrize("command", ["run", "export"])
def test_a_command_without_jax_platforms_prints_no_plugin_noise(tmp_path, command):
  """With kdjax[plan] on a machine without a TPU or CUDA, starting jax's backends makes libtpu
  and the CUDA plugin print several lines (a plugin error, TPU host warnings); a run shows at
  most one note naming the plugin that did not start, then its own output."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  args, error = {
      "run": (["--config=configs/quickstart.py", f"--workdir={tmp_path / 'w'}",
               "--config.batch_size=-3"],
              "kdjax: error: config.batch_size must be an integer >= 1, got -3"),
      "export": (["export", f"--workdir={tmp_path / 'w'}"],
                 f"kdjax: error: --workdir={tmp_path / 'w'} does not exist; pass the --workdir "
                 "of a finished training command")}[command]
  result = subprocess.run([sys.executable, "-m", "kdjax.main", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300, check=False)
  lines = result.stderr.splitlines()
  assert result.returncode != 0 and lines[-1] == error, result.stderr
  notes = lines[:-1]
  assert len(notes) <= 1, result.stderr
  for note in notes:
    assert note.startswith("kdjax: note: jax's plugin ") and "JAX_PLATFORMS=cpu" in note, note
  if importlib.util.find_spec("libtpu") is not None or importlib.util.find_spec(
      "jax_plugins.xla_cuda12") is not None:
    # The extra is installed: the filtered lines are real ones this machine prints.
    said = subprocess.run([sys.executable, "-c", "import jax; jax.default_backend()"], env=env,
                          capture_output=True, text=True, check=True, timeout=300).stderr
    assert ("xla_cuda12" in said) == bool(notes), said

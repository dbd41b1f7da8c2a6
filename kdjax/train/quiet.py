"""Background libraries kept to one line, so the final ``kdjax: error`` line is what a user reads.

Without ``--verbose``, :func:`quiet_background_tracebacks` drops the tracebacks of library log
records and background threads (async checkpoint saves), the repeated reports of a full disk,
and the warnings of :data:`QUIET_LOGGERS`; :func:`no_chip_noise` drops what native libraries
(libtpu, the CUDA plugin) print while they start on a machine without their chip.
"""
from __future__ import annotations

import logging as std_logging
import re
import sys
import threading
from typing import ContextManager

from kdjax._native_stderr import CUDA_STUB, native_stderr_filtered
from kdjax.train.describe import disk_full_path, first_line, says_disk_full

__all__ = ["NO_CHIP_NOISE", "PLUGIN_FAILED", "QUIET_LOGGERS", "no_chip_noise",
           "quiet_background_tracebacks", "start_backends"]


_BACKGROUND_LOGGERS = re.compile(r"orbax|asyncio|tensorstore")


class _OneLine(std_logging.Filter):
  """Without --verbose: log records lose their tracebacks; full-disk errors are left to the
  final ``kdjax: error`` line."""

  disk_full = False  # Set once a record reports a full disk.

  def filter(self, record: std_logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    if record.levelno >= std_logging.ERROR:
      cause = record.exc_info[1] if record.exc_info else None
      if (says_disk_full(message) or "RESOURCE_EXHAUSTED" in message or
          (cause is not None and disk_full_path(cause, "") is not None)):
        _OneLine.disk_full = True
        return False
      if _OneLine.disk_full and _BACKGROUND_LOGGERS.search(
          f"{record.name} {record.pathname}"):
        # Orbax's save threads and asyncio report the same full disk several times more
        # ("Failed to run 4 Handler Commit operations", "Event loop is closed").
        return False
    if record.exc_info or "Traceback (most recent call last)" in message:
      record.msg, record.args = first_line(message), None
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


# Libraries whose warnings a run cannot act on (onnx_ir warns once per intermediate value whose
# type it cannot serialize while jax2onnx writes a model); shown with --verbose.
QUIET_LOGGERS = ("onnx_ir",)


def quiet_background_tracebacks():
  """Without --verbose: one-line library log records, no traceback from background threads
  (the final ``kdjax: error`` line says what happened) and only errors from
  :data:`QUIET_LOGGERS`."""
  for name in QUIET_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.ERROR)
  one_line = _OneLine()
  for logger in (std_logging.getLogger(), std_logging.getLogger("absl")):
    logger.addFilter(one_line)
    for handler in logger.handlers:
      handler.addFilter(one_line)

  def hook(args):
    # Background threads (async checkpoint saves) report their failure to the main thread,
    # which prints the one line; here only a short note.
    if disk_full_path(args.exc_value, "") is not None:
      _OneLine.disk_full = True
      return
    if _OneLine.disk_full and _BACKGROUND_LOGGERS.search(str(args.exc_value)):
      return
    print(f"kdjax: warning: background thread {getattr(args.thread, 'name', '?')} failed: "
          f"{args.exc_type.__name__}: {first_line(str(args.exc_value))}", file=sys.stderr,
          flush=True)

  threading.excepthook = hook
  sys.excepthook = _quiet_callbacks(sys.excepthook)
  sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def _after_failed_save(exc: BaseException | None) -> bool:
  """Whether ``exc`` is a callback's echo of a save that already failed: tensorstore and
  Orbax calling into an asyncio loop that the failed save closed, after a full disk."""
  return exc is not None and (
      _OneLine.disk_full or (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)))


def _quiet_callbacks(previous):
  # Native callbacks (tensorstore's futures) print their exceptions through sys.excepthook.
  def excepthook(exc_type, exc, tb):
    if not _after_failed_save(exc):
      previous(exc_type, exc, tb)
  return excepthook


def _quiet_unraisable(previous):
  def unraisablehook(unraisable):
    if not _after_failed_save(unraisable.exc_value):
      previous(unraisable)
  return unraisablehook


# libtpu starting on a host that is no TPU VM (compile-only topologies): no VM metadata to read.
NO_CHIP_NOISE = re.compile(CUDA_STUB.pattern + r"|TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|"
                           r"Logging before InitGoogle\(\)|=== Source Location Trace: ===|"
                           r"libtpu_init_utils\.cc")


# jax's log record when a PJRT plugin fails to start (the CUDA plugin without CUDA libraries).
PLUGIN_FAILED = re.compile(r"Jax plugin configuration error: Exception when calling "
                           r"jax_plugins\.(\w+)\.initialize")


class _PluginFailures(std_logging.Filter):
  """Drops jax's records of a plugin that failed to start (with their tracebacks), keeping the
  plugins' names."""

  def __init__(self):
    super().__init__()
    self.failed: list[str] = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    try:
      found = PLUGIN_FAILED.search(record.getMessage())
    except Exception:  # pylint: disable=broad-except
      return True
    if found:
      self.failed.append(found.group(1))
    return not found


def start_backends() -> str | None:
  """Starts jax's backends without what libtpu and the CUDA plugin print on a machine without
  their chip: :data:`NO_CHIP_NOISE` on file descriptor 2, and jax's record (with traceback) of
  a plugin that failed to start. When a plugin failed (``kdjax[plan]``'s CUDA plugin on a
  machine without CUDA libraries), process 0 prints one note instead: which backend the run
  uses, and how to silence the plugin or see its error.

  Returns:
    That note, or ``None`` when nothing failed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  failures = _PluginFailures()
  logger = std_logging.getLogger("jax._src.xla_bridge")
  logger.addFilter(failures)
  try:
    with native_stderr_filtered(NO_CHIP_NOISE):
      backend = jax.default_backend()
  finally:
    logger.removeFilter(failures)
  if not failures.failed:
    return None
  note = (f"kdjax: note: jax's plugin {', '.join(sorted(set(failures.failed)))} did not start "
          f"(no CUDA libraries here?), so this run uses the {backend}; to use a GPU install "
          "jax's CUDA libraries (pip install 'jax[cuda12]'), on a CPU machine set "
          "JAX_PLATFORMS=cpu to skip the plugin; --verbose shows its error")
  if jax.process_index() == 0:
    print(note, file=sys.stderr, flush=True)
  return note


def no_chip_noise() -> ContextManager[None]:
  """Inside the block, what libtpu and the CUDA plugin print to stderr (file descriptor 2)
  because this machine has no TPU or GPU is dropped (:data:`NO_CHIP_NOISE`); other lines are
  written back when the block ends."""
  return native_stderr_filtered(NO_CHIP_NOISE)

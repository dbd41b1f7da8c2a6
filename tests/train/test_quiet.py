"""kdjax.train.quiet: background libraries kept to one line without --verbose."""
import logging
import threading

from kdjax.train import quiet


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

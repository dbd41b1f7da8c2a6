"""What native libraries print straight to stderr, filtered; first imported with ``kdjax``.

jaxlib's CUDA plugin, installed where there is no CUDA (``kdjax[plan]`` on a CPU machine), logs
"Could not find cuda drivers on your machine, GPU will not be used." at ``import jax``, three
times, and libtpu warns that this host is no TPU VM when it starts to compile for a slice.
Neither can act on anything, and both write to file descriptor 2 below Python's ``logging``, so
:func:`native_stderr_filtered` captures the descriptor around such a block and writes back every
line except those a pattern names. Importing this module imports ``jax`` that way.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# The CUDA stub's line, and absl's note that precedes each log line written before it starts.
CUDA_STUB = re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers|"
                       r"All log messages before absl::InitializeLog\(\) is called")


@contextlib.contextmanager
def native_stderr_filtered(drop: re.Pattern[str]) -> Iterator[None]:
  """Inside the block, stderr lines (file descriptor 2, Python's own writes included) matching
  ``drop`` are dropped; the others are written back when the block ends, exceptions or not."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      kept = "".join(line for line in lines if not drop.search(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


with native_stderr_filtered(CUDA_STUB):
  import jax  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top

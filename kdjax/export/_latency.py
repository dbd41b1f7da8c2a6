"""Inference latency of an exported ONNX model in onnxruntime, on the machine that runs it."""
from __future__ import annotations

import os
import statistics
import time
from typing import Sequence

import numpy as np

from kdjax.export import _verify

LATENCY_BATCHES = (1, 32)


def latency_key(batch_size: int) -> str:
  """The results key of the latency at ``batch_size``: ``'latency_b<batch_size>_ms'``."""
  return f"latency_b{int(batch_size)}_ms"


def onnx_latency(path: str | os.PathLike, input_shape: Sequence[int], *,
                 batch_sizes: Sequence[int] = LATENCY_BATCHES, warmup: int = 3, runs: int = 15,
                 seed: int = 0) -> dict[str, float]:
  """Median wall time (milliseconds) of one onnxruntime (CPU) call of an ONNX model per batch
  size, on random inputs, after ``warmup`` untimed calls.

  The time is the machine's own (its cores, its load), so it compares models measured on one
  machine, not machines.

  Args:
    path: the ``.onnx`` file (:func:`export_onnx`).
    input_shape: one example's shape (without the batch dimension).
    batch_sizes: the batch sizes to time; a model written with a fixed batch size
      (``batch_size=``) is timed at that size only.
    warmup: untimed calls first at each batch size (onnxruntime allocates on the first).
    runs: timed calls at each batch size; their median is reported.
    seed: the random inputs' seed.

  Returns:
    ``{latency_key(b): milliseconds}`` for each batch size timed.

  Examples:
    >>> onnx_latency("export/student_kd.onnx", (8, 8, 1))  # doctest: +SKIP
    {'latency_b1_ms': 0.05, 'latency_b32_ms': 0.21}
  """
  if runs < 1 or warmup < 0:
    raise ValueError(f"onnx_latency needs runs >= 1 and warmup >= 0; got runs={runs}, "
                     f"warmup={warmup}")
  session = _verify._onnx_session(path)  # pylint: disable=protected-access
  spec = session.get_inputs()[0]
  fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
  rng = np.random.default_rng(seed)
  out = {}
  for b in batch_sizes:
    if fixed is not None and b != fixed:
      continue
    x = rng.standard_normal((int(b), *[int(d) for d in input_shape])).astype(np.float32)
    feed = {spec.name: x}
    for _ in range(warmup):
      session.run(None, feed)
    times = []
    for _ in range(runs):
      start = time.perf_counter()
      session.run(None, feed)
      times.append(time.perf_counter() - start)
    out[latency_key(b)] = 1e3 * statistics.median(times)
  return out

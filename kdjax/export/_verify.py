"""Checking written artifacts in their own runtimes against JAX, and the export manifest."""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from kdjax.compress._deps import require

MANIFEST = "manifest.json"


def _stablehlo_runner(path):
  exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
  return lambda x: np.asarray(exported.call(x))


def _onnx_session(path):
  ort = require("onnxruntime")
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(str(path), sess_options=options,
                              providers=["CPUExecutionProvider"])


def verify(fn: Callable, batches: Iterable[Mapping[str, Any]], *,
           stablehlo: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
           input_key: str = "image", label_key: str = "label") -> dict[str, Any]:
  """Runs each artifact on ``batches`` in its own runtime and compares it with JAX.

  The StableHLO file is reloaded with :func:`jax.export.deserialize`, the ONNX file with
  onnxruntime (CPU). For every batch, JAX's logits come from ``jax.jit(fn)``; rows where
  ``batch['mask']`` is False (padding) are ignored.

  Args:
    fn: the inference function the artifacts were written from (:func:`inference_fn`).
    batches: e.g. ``kdjax.data.make_eval_batches(dataset, batch_size=...)``.
    stablehlo, onnx: the artifact paths (either may be None).
    input_key, label_key: the batch entries holding the images and the integer labels.

  Returns:
    ``{'jax_accuracy': float, 'num_examples': int, 'formats': {format: {'path', 'size_bytes',
    'max_abs_diff', 'accuracy', ['latency_ms']}}}``: ``max_abs_diff`` is the largest
    ``|artifact logits - JAX logits|`` over the split, ``accuracy`` the top-1 accuracy of the
    artifact's logits, ``latency_ms`` (ONNX) onnxruntime's median wall time per batch.
  """
  runners = {}
  if stablehlo is not None:
    runners["stablehlo"] = _stablehlo_runner(stablehlo)
  session = None
  if onnx is not None:
    session = _onnx_session(onnx)
    name = session.get_inputs()[0].name
    runners["onnx"] = lambda x: session.run(None, {name: x})[0]
  if not runners:
    raise ValueError("verify needs at least one artifact: pass stablehlo=... and/or onnx=...")
  paths = {"stablehlo": stablehlo, "onnx": onnx}
  reference = jax.jit(fn)
  diff = {k: 0.0 for k in runners}
  correct = {k: 0 for k in runners}
  times: list[float] = []
  jax_correct = total = 0
  for batch in batches:
    x = np.asarray(batch[input_key], np.float32)
    labels = np.asarray(batch[label_key])
    mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(len(x), bool)
    ref = np.asarray(reference(x))
    jax_correct += int(np.sum((ref.argmax(-1) == labels) & mask))
    total += int(mask.sum())
    for fmt, run in runners.items():
      if fmt == "onnx":
        if not times:
          run(x)  # warm-up: onnxruntime allocates on the first call
        start = time.perf_counter()
        out = run(x)
        times.append(time.perf_counter() - start)
      else:
        out = run(x)
      out = np.asarray(out)
      if mask.any():
        diff[fmt] = max(diff[fmt], float(np.max(np.abs(out[mask] - ref[mask]))))
      correct[fmt] += int(np.sum((out.argmax(-1) == labels) & mask))
  if total == 0:
    raise ValueError("verify got no (unmasked) examples; pass the evaluation batches")
  formats = {}
  for fmt in runners:
    entry = {"path": str(paths[fmt]), "size_bytes": os.path.getsize(paths[fmt]),
             "max_abs_diff": diff[fmt], "accuracy": correct[fmt] / total}
    if fmt == "onnx":
      entry["latency_ms"] = 1e3 * statistics.median(times)
    formats[fmt] = entry
  return {"jax_accuracy": jax_correct / total, "num_examples": total, "formats": formats}


def manifest_entry(report: Mapping[str, Any], *, input_shape, batch_size: int | None = None
                   ) -> dict[str, Any]:
  """One run's manifest entry from :func:`verify`'s report.

  ``{input_shape, input_dtype, stablehlo, onnx, max_abs_diff, accuracy, size_bytes, latency_ms,
  jax_accuracy, formats}``: ``input_shape`` has ``null`` for a symbolic batch dimension;
  ``stablehlo`` / ``onnx`` are the file paths (null when not written); ``max_abs_diff`` is the
  largest over the formats; ``accuracy`` and ``size_bytes`` are the ONNX artifact's (the
  StableHLO one's without ONNX), ``latency_ms`` onnxruntime's median per batch; ``formats``
  keeps each format's own numbers.
  """
  formats = report["formats"]
  main = formats.get("onnx", formats.get("stablehlo"))
  return {
      "input_shape": [batch_size, *[int(d) for d in input_shape]],
      "input_dtype": "float32",
      "stablehlo": formats["stablehlo"]["path"] if "stablehlo" in formats else None,
      "onnx": formats["onnx"]["path"] if "onnx" in formats else None,
      "max_abs_diff": max(f["max_abs_diff"] for f in formats.values()),
      "accuracy": main["accuracy"],
      "size_bytes": main["size_bytes"],
      "latency_ms": formats["onnx"]["latency_ms"] if "onnx" in formats else None,
      "jax_accuracy": report["jax_accuracy"],
      "formats": dict(formats),
  }


def write_manifest(export_dir: str | os.PathLike, entries: Mapping[str, Mapping[str, Any]]
                   ) -> pathlib.Path:
  """Merges ``{run: entry}`` into ``export_dir/manifest.json`` (other runs' entries are kept) and
  writes it atomically. Returns the manifest's path."""
  export_dir = pathlib.Path(export_dir)
  export_dir.mkdir(parents=True, exist_ok=True)
  path = export_dir / MANIFEST
  manifest = json.loads(path.read_text()) if path.exists() else {}
  manifest.update({run: dict(entry) for run, entry in entries.items()})
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
  return path

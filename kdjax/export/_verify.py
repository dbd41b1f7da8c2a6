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
  return lambda x: _as_tuple(exported.call(x))


def _onnx_session(path):
  ort = require("onnxruntime")
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(str(path), sess_options=options,
                              providers=["CPUExecutionProvider"])


def _as_tuple(out: Any) -> tuple[np.ndarray, ...]:
  return tuple(np.asarray(o) for o in out) if isinstance(out, (tuple, list)) else (
      np.asarray(out),)


def _correct(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
  """Correct top-1 predictions of ``logits`` against ``labels`` and how many were scored, over
  the rows ``mask`` keeps: one per image (labels ``[B]``) or per pixel (class maps
  ``[B, H, W]``)."""
  keep = np.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - 1)), labels.shape)
  return int(np.sum((logits.argmax(-1) == labels) & keep)), int(keep.sum())


def verify(fn: Callable, batches: Iterable[Mapping[str, Any]], *,
           stablehlo: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
           input_key: str = "image", label_key: str = "label") -> dict[str, Any]:
  """Runs each artifact on ``batches`` in its own runtime and compares it with JAX.

  The StableHLO file is reloaded with :func:`jax.export.deserialize`, the ONNX file with
  onnxruntime (CPU). For every batch, JAX's outputs come from ``jax.jit(fn)``; rows where
  ``batch['mask']`` is False (padding) are ignored. ``fn`` may return several outputs (a
  detector's heads, :func:`inference_fn` with ``outputs``): each is compared, and the first
  (the logits) is scored.

  Args:
    fn: the inference function the artifacts were written from (:func:`inference_fn`).
    batches: e.g. ``kdjax.data.make_eval_batches(dataset, batch_size=...)``.
    stablehlo, onnx: the artifact paths (either may be None).
    input_key, label_key: the batch entries holding the images and the integer labels: one
      class per image (``[B]``) or per pixel (``[B, H, W]``, segmentation, scored per pixel).
      Batches without ``label_key`` (detection: boxes) are compared but not scored.

  Returns:
    ``{'jax_accuracy': float | None, 'num_examples': int, 'formats': {format: {'path',
    'size_bytes', 'max_abs_diff', 'accuracy', ['latency_ms']}}}``: ``max_abs_diff`` is the
    largest ``|artifact output - JAX output|`` over the split and every output, ``accuracy`` the
    top-1 accuracy of the artifact's logits (of pixels for class maps; ``None`` without
    labels), ``latency_ms`` (ONNX) onnxruntime's median wall time per batch.
  """
  runners = {}
  if stablehlo is not None:
    runners["stablehlo"] = _stablehlo_runner(stablehlo)
  session = None
  if onnx is not None:
    session = _onnx_session(onnx)
    name = session.get_inputs()[0].name
    runners["onnx"] = lambda x: session.run(None, {name: x})
  if not runners:
    raise ValueError("verify needs at least one artifact: pass stablehlo=... and/or onnx=...")
  paths = {"stablehlo": stablehlo, "onnx": onnx}
  reference = jax.jit(fn)
  diff = {k: 0.0 for k in runners}
  correct = {k: 0 for k in runners}
  times: list[float] = []
  jax_correct = total = scored = 0
  for batch in batches:
    x = np.asarray(batch[input_key], np.float32)
    labels = np.asarray(batch[label_key]) if label_key in batch else None
    mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(len(x), bool)
    refs = _as_tuple(reference(x))
    total += int(mask.sum())
    if labels is not None:
      hits, count = _correct(refs[0], labels, mask)
      jax_correct, scored = jax_correct + hits, scored + count
    for fmt, run in runners.items():
      if fmt == "onnx":
        if not times:
          run(x)  # warm-up: onnxruntime allocates on the first call
        start = time.perf_counter()
        outs = run(x)
        times.append(time.perf_counter() - start)
      else:
        outs = run(x)
      outs = _as_tuple(outs)
      if len(outs) != len(refs):
        raise ValueError(f"the {fmt} artifact gives {len(outs)} outputs but the function it was "
                         f"written from gives {len(refs)}; export it again")
      if mask.any():
        for out, ref in zip(outs, refs):
          diff[fmt] = max(diff[fmt], float(np.max(np.abs(out[mask] - ref[mask]))))
      if labels is not None:
        correct[fmt] += _correct(outs[0], labels, mask)[0]
  if total == 0:
    raise ValueError("verify got no (unmasked) examples; pass the evaluation batches")
  formats = {}
  for fmt in runners:
    entry = {"path": str(paths[fmt]), "size_bytes": os.path.getsize(paths[fmt]),
             "max_abs_diff": diff[fmt], "accuracy": correct[fmt] / scored if scored else None}
    if fmt == "onnx":
      entry["latency_ms"] = 1e3 * statistics.median(times)
    formats[fmt] = entry
  return {"jax_accuracy": jax_correct / scored if scored else None, "num_examples": total,
          "formats": formats}


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

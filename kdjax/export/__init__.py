"""Export of trained (float, pruned or quantized) models, verified in their own runtimes.

* :func:`export_stablehlo`: ``jax.export`` serialized StableHLO, reloadable with
  ``jax.export.deserialize`` without kdjax.
* :func:`export_onnx`: ONNX through jax2onnx, run by onnxruntime.
* :func:`verify`: reload each artifact, compare with JAX on the evaluation split, measure.
* :func:`onnx_latency`: onnxruntime's median time per call at batch 1 and 32.
* :func:`export_model`: all of it for one model, writing ``<dir>/<name>.{stablehlo,onnx}`` and
  ``<dir>/manifest.json``.

A library: a model in, artifacts out. The ``export`` run kind (:mod:`kdjax.train.kinds.export`)
and ``kdjax export`` (a finished run of a workdir) call it.

Needs the deploy extra for ONNX and quantized models: ``pip install -e ".[deploy]"``. See
``docs/deploy.md``.
"""
from kdjax.export._artifacts import BATCH
from kdjax.export._artifacts import ONNX_OPSET
from kdjax.export._artifacts import export_onnx
from kdjax.export._artifacts import export_stablehlo
from kdjax.export._artifacts import inference_fn
from kdjax.export._latency import LATENCY_BATCHES
from kdjax.export._latency import latency_key
from kdjax.export._latency import onnx_latency
from kdjax.export._run import FORMATS
from kdjax.export._run import export_model
from kdjax.export._verify import MANIFEST
from kdjax.export._verify import manifest_entry
from kdjax.export._verify import verify
from kdjax.export._verify import write_manifest

__all__ = ["BATCH", "FORMATS", "LATENCY_BATCHES", "MANIFEST", "ONNX_OPSET", "export_model",
           "export_onnx", "export_stablehlo", "inference_fn", "latency_key", "manifest_entry",
           "onnx_latency", "verify", "write_manifest"]

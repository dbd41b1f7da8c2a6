"""Export of trained (float, pruned or quantized) models, verified in their own runtimes.

* :func:`export_stablehlo`: ``jax.export`` serialized StableHLO, reloadable with
  ``jax.export.deserialize`` without kdjax.
* :func:`export_onnx`: ONNX through jax2onnx, run by onnxruntime.
* :func:`verify`: reload each artifact, compare with JAX on the evaluation split, measure.
* :func:`export_model` / :func:`export_run` / :func:`main` (``kdjax export``): all of it, writing
  ``WORKDIR/export/<run>.{stablehlo,onnx}`` and ``WORKDIR/export/manifest.json``.

Needs the deploy extra for ONNX and quantized models: ``pip install -e ".[deploy]"``. See
``docs/deploy.md``.
"""
from kdjax.export._artifacts import BATCH
from kdjax.export._artifacts import ONNX_OPSET
from kdjax.export._artifacts import export_onnx
from kdjax.export._artifacts import export_stablehlo
from kdjax.export._artifacts import inference_fn
from kdjax.export._run import FORMATS
from kdjax.export._run import export_model
from kdjax.export._run import export_run
from kdjax.export._run import main
from kdjax.export._verify import MANIFEST
from kdjax.export._verify import manifest_entry
from kdjax.export._verify import verify
from kdjax.export._verify import write_manifest

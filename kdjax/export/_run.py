"""Exporting a model: write its artifacts, reload and verify them, record them in the manifest."""
from __future__ import annotations

import pathlib
from typing import Any, Iterable, Mapping, Sequence

from kdjax.models import Model
from kdjax.export import _artifacts
from kdjax.export import _verify

FORMATS = ("stablehlo", "onnx")


def export_model(model: Model, *, name: str, export_dir: str | pathlib.Path,
                 input_shape: Sequence[int], batches: Iterable[Mapping[str, Any]],
                 formats: Sequence[str] = FORMATS, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, batch_size: int | None = None,
                 opset: int = _artifacts.ONNX_OPSET,
                 class_names: Sequence[str] | None = None,
                 outputs: Sequence[str] = ()) -> dict[str, Any]:
  """Writes ``export_dir/<name>.stablehlo`` and/or ``<name>.onnx``, verifies them on ``batches``
  and records the run in ``export_dir/manifest.json``.

  Args:
    model: the model to export (float, pruned, :func:`kdjax.compress.qat` or
      :func:`kdjax.compress.ptq`; for integer weights on disk export the :func:`~kdjax.compress.ptq`
      form).
    name: the run name (file stem and manifest key).
    export_dir: usually ``WORKDIR/export``.
    input_shape: one example's shape (``dataset.info.input_shape``).
    batches: the evaluation batches (``kdjax.data.make_eval_batches(dataset, batch_size=...)``,
      ``standardize=False``).
    formats: any of ``'stablehlo'``, ``'onnx'``.
    mean, std: the dataset's per-channel statistics when the model was trained on standardized
      inputs (``config.data.standardize``); the artifact then standardizes inside.
    batch_size: None (symbolic batch dimension) or a fixed batch size.
    opset: the ONNX opset.
    class_names: the name of each output index (``dataset.info.class_names``), recorded in the
      manifest as ``class_names`` (``null`` when the dataset has none) so a deployment can
      label its predictions.
    outputs: feature taps written as outputs after ``'logits'`` (:func:`inference_fn`), e.g.
      ``('box_logits',)`` for a point detector: the raw heads, decoded outside the artifact.

  Returns:
    The manifest entry (:func:`manifest_entry`, plus ``class_names`` and ``outputs``: the
    artifact's output names in order).
  """
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"export formats {list(formats)} must be a non-empty subset of {FORMATS}")
  export_dir = pathlib.Path(export_dir)
  fn = _artifacts.inference_fn(model, mean=mean, std=std, outputs=outputs)
  output_names = (_artifacts.OUTPUT_NAME, *outputs)
  paths = {}
  if "stablehlo" in formats:
    paths["stablehlo"] = _artifacts.export_stablehlo(
        fn, input_shape, export_dir / f"{name}.stablehlo", batch_size=batch_size)
  if "onnx" in formats:
    paths["onnx"] = _artifacts.export_onnx(fn, input_shape, export_dir / f"{name}.onnx",
                                           batch_size=batch_size, opset=opset, model_name=name,
                                           output_names=output_names)
  report = _verify.verify(fn, batches, **paths)
  entry = _verify.manifest_entry(report, input_shape=input_shape, batch_size=batch_size)
  entry["class_names"] = None if class_names is None else [str(n) for n in class_names]
  entry["outputs"] = list(output_names)
  _verify.write_manifest(export_dir, {name: entry})
  return entry

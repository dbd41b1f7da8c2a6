"""Exporting a model, or a finished run of a workdir: write, reload, verify, record."""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import compress
from kdjax import models
from kdjax.models import Model
from kdjax.export import _artifacts
from kdjax.export import _verify

FORMATS = ("stablehlo", "onnx")
SUFFIXES = {"stablehlo": ".stablehlo", "onnx": ".onnx"}


def export_model(model: Model, *, name: str, export_dir: str | pathlib.Path,
                 input_shape: Sequence[int], batches: Iterable[Mapping[str, Any]],
                 formats: Sequence[str] = FORMATS, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, batch_size: int | None = None,
                 opset: int = _artifacts.ONNX_OPSET) -> dict[str, Any]:
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

  Returns:
    The manifest entry (:func:`manifest_entry`).
  """
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"export formats {list(formats)} must be a non-empty subset of {FORMATS}")
  export_dir = pathlib.Path(export_dir)
  fn = _artifacts.inference_fn(model, mean=mean, std=std)
  paths = {}
  if "stablehlo" in formats:
    paths["stablehlo"] = _artifacts.export_stablehlo(
        fn, input_shape, export_dir / f"{name}.stablehlo", batch_size=batch_size)
  if "onnx" in formats:
    paths["onnx"] = _artifacts.export_onnx(fn, input_shape, export_dir / f"{name}.onnx",
                                           batch_size=batch_size, opset=opset, model_name=name)
  report = _verify.verify(fn, batches, **paths)
  entry = _verify.manifest_entry(report, input_shape=input_shape, batch_size=batch_size)
  _verify.write_manifest(export_dir, {name: entry})
  return entry



def _model_section(config: ml_collections.ConfigDict, run: str) -> tuple[Any, str]:
  """The config section describing ``run``'s model, and its name."""
  side = "teacher" if run == "teacher" else "student"
  for decl in config.get("runs", ()) or ():
    if hasattr(decl, "get") and decl.get("name") == run and decl.get("model"):
      side = decl["model"]
  if side in ("teacher", "student"):
    return config[side], side
  sections = config.get("models", {}) or {}
  if side not in sections:
    raise ValueError(f"run {run!r} names model {side!r}, which is not in config.models")
  return sections[side], f"models.{side}"


def _compress_setting(config, key: str, default: Any) -> Any:
  section = config.get("compress", None) or {}
  value = section.get(key, default) if hasattr(section, "get") else default
  return default if value is None else value


def _int8_model(trained: Model, section, input_shape, config) -> Model:
  """The PTQ form (integer weights) of a trained model, with ``config.compress``'s rules."""
  from kdjax.train import builders  # pylint: disable=g-import-not-at-top
  kwargs = dict(section.get("model_kwargs", {}) or {})
  module = models.get_model(section.model, num_classes=section.num_classes,
                            dtype=builders.DTYPES[section.get("dtype", "float32")], **kwargs)
  weight_bits = int(_compress_setting(config, "weight_bits", 8))
  act_bits = _compress_setting(config, "act_bits", 8)
  keep_float = tuple(_compress_setting(config, "keep_float", ()))
  return compress.ptq(trained, module, example_input=jax.ShapeDtypeStruct(
      (1, *input_shape), jnp.float32), weight_bits=weight_bits,
      act_bits=None if act_bits in (0, "none") else int(act_bits), keep_float=keep_float)


def export_run(workdir: str | pathlib.Path, run: str, *, formats: Sequence[str] = FORMATS,
               quantize: str = "auto", batch_size: int | None = None) -> dict[str, Any]:
  """Exports the final checkpoint of ``run`` in ``workdir`` (``kdjax export``).

  Rebuilds the run's model from ``workdir/config.json``, restores ``params['student']`` /
  ``student_state`` from ``workdir/<run>/checkpoints``, writes ``workdir/export/<run>.*`` and
  updates ``workdir/export/manifest.json``.

  Args:
    workdir: a workdir of ``python -m kdjax.main``.
    run: the run name (``student_kd``, ``student_kd_pruned``, ``student_kd_int8``, ...).
    formats: the formats to write.
    quantize: ``'int8'``: export the integer-weight (PTQ) form with ``config.compress``'s
      ``weight_bits`` / ``act_bits`` / ``keep_float`` (artifacts named ``<run>`` for runs ending
      in ``_int8``, ``<run>_ptq`` otherwise); ``'none'``: float; ``'auto'``: ``'int8'`` for
      runs whose name ends in ``_int8``.
    batch_size: None (symbolic batch) or fixed.

  Returns:
    The manifest entry.
  """
  from kdjax import data  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top
  from kdjax.train import builders  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} does not exist; --workdir must be a workdir written by "
                            "python -m kdjax.main")
  if quantize not in ("auto", "none", "int8"):
    raise ValueError(f"quantize={quantize!r} must be auto, none or int8")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  if not (workdir / run).is_dir():
    runs = sorted(p.name for p in workdir.iterdir() if (p / "checkpoints").is_dir())
    raise ValueError(f"workdir {workdir} has no run {run!r}; its runs: {', '.join(runs) or '-'}")
  dataset = data.get_dataset(config.data.name, data_dir=config.data.get("data_dir") or None)
  info = dataset.info
  section, side = _model_section(config, run)
  if section.get("num_classes") is None:
    section.num_classes = info.num_classes
  model = builders.make_model(section, side=side, input_shape=info.input_shape,
                              rng=jax.random.key(0))
  params, model_state = train.load_model_variables(workdir / run, model.params,
                                                   model.model_state, what=f"run {run!r}")
  trained = models.Model(apply=model.apply, params=params, model_state=model_state,
                         taps=(), name=model.name)
  name = run
  if quantize == "int8" or (quantize == "auto" and run.endswith("_int8")):
    trained = _int8_model(trained, section, info.input_shape, config)
    name = run if run.endswith("_int8") else f"{run}_ptq"
  mean, std = (info.mean, info.std) if config.data.get("standardize") else (None, None)
  batches = data.make_eval_batches(dataset, batch_size=int(config.data.eval_batch_size),
                                   split=config.data.get("eval_split") or None)
  return export_model(trained, name=name, export_dir=workdir / "export",
                      input_shape=info.input_shape, batches=batches, formats=formats, mean=mean,
                      std=std, batch_size=batch_size)


def main(argv: Sequence[str] | None = None) -> int:
  """``kdjax export --workdir=W --run=student_kd [--formats=stablehlo,onnx] [--quantize=auto]
  [--batch_size=N]``: exports a finished run and prints its manifest entry."""
  parser = argparse.ArgumentParser(prog="kdjax export", description=main.__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--run", default="student_kd")
  parser.add_argument("--formats", default=",".join(FORMATS))
  parser.add_argument("--quantize", default="auto", choices=("auto", "none", "int8"))
  parser.add_argument("--batch_size", type=int, default=None,
                      help="fixed batch size of the artifacts (default: symbolic)")
  args = parser.parse_args(argv)
  formats = tuple(f for f in args.formats.split(",") if f)
  entry = export_run(args.workdir, args.run, formats=formats, quantize=args.quantize,
                     batch_size=args.batch_size)
  print(json.dumps({args.run: entry}, indent=2))
  return 0

"""``export``: writes the trained models of earlier runs (``runs``) to ``WORKDIR/<name>/``.

A run of 0 steps: each read run's final model, in the form its kind exports
(:meth:`kdjax.train.kinds.base.Run.export_form`: the integer-weight model of a quantized run),
goes through :func:`kdjax.export.export_model` in ``formats`` (``'stablehlo'``, ``'onnx'``),
which reloads every artifact in its own runtime and compares it with JAX on the evaluation
split. The entry holds one member per exported run (``accuracy`` of the artifact: of pixels for
segmentation, ``None`` for detection; ``max_abs_diff`` from JAX over every output,
``size_bytes``, and with ONNX ``latency_b1_ms`` / ``latency_b32_ms``: onnxruntime's median
time per call at batch 1 and 32 on the machine that ran it); ``manifest.json`` beside the
artifacts holds all. A detector's artifact holds
its raw heads (``logits``, ``box_logits``; :func:`task_outputs`), not decoded boxes.
``config.export.formats`` adds this run (named ``export``) to the standard pipeline. Format
``'hf'`` writes a decoder as a Hugging Face directory instead (:mod:`._hf_export`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kdjax import data as data_lib
from kdjax import export as export_lib
from kdjax.train import schema
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import _hf_export
from kdjax.train.kinds import base


@dataclasses.dataclass(frozen=True)
class Export(base.Run):
  runs: tuple[str, ...] = ()
  formats: tuple[str, ...] = export_lib.FORMATS
  batch_size: int = 0  # 0: a symbolic batch dimension.

  reads: ClassVar[tuple[str, ...]] = ("runs",)


def export_run(ctx: base.Context, run: str, export_dir: str, *, formats, batch_size: int = 0,
               form: str = "auto") -> dict[str, Any]:
  """Exports run ``run``'s trained model into ``export_dir``; returns its manifest entry.

  ``form``: ``'auto'``: the form the run's kind exports; ``'none'``: the float model;
  ``'int8'``: the integer-weight (post-training quantized) form, named ``<run>_ptq`` unless the
  run's kind exports that form itself.
  """
  from kdjax.train.kinds import compressed  # pylint: disable=g-import-not-at-top
  decl = ctx.decls[run]
  outputs = task_outputs(ctx)
  trained = ctx.trained(run, taps=outputs)
  exported = decl.export_form(ctx, trained)
  name = run
  if form == "none":
    exported = trained
  elif form == "int8" and exported is trained:
    exported, name = compressed.ptq(ctx, trained), f"{run}_ptq"
  c = ctx.config
  dataset = data_lib.get_dataset(c.data.name, data_dir=c.data.data_dir or None)
  info = dataset.info
  mean, std = (info.mean, info.std) if c.data.standardize else (None, None)
  batches = data_lib.make_eval_batches(dataset, batch_size=int(c.data.eval_batch_size),
                                       split=c.data.eval_split or None)
  return export_lib.export_model(exported, name=name, export_dir=export_dir,
                                 input_shape=info.input_shape, batches=batches,
                                 formats=tuple(formats), mean=mean, std=std,
                                 batch_size=batch_size or None, class_names=info.class_names,
                                 outputs=outputs)


def task_outputs(ctx: base.Context) -> tuple[str, ...]:
  """The heads an artifact holds after the logits: the taps the task's own loss reads (a point
  detector's ``box_logits``; none for classification and segmentation, whose logits are the
  whole prediction). Boxes are decoded from the raw heads outside the artifact."""
  data = ctx.data
  return tuple(data.task.supervised(data.shapes.label_key).needs.student)


def plan(ctx: base.Context, decl: Export) -> RunPlan:
  known = schema.EXPORT_FORMATS
  unknown = [f for f in decl.formats if f not in known]
  if unknown or not decl.formats:
    raise ConfigError(f"run '{decl.name}' (kind 'export'): formats={list(decl.formats)}; use a "
                      f"non-empty subset of {known}")
  formats = tuple(f for f in decl.formats if f != _hf_export.FORMAT)
  if not decl.runs:
    raise ConfigError(f"run '{decl.name}' (kind 'export') needs runs=(the runs to export, ...)")

  def evaluate(runner, state):
    del runner, state
    members = []
    for run in decl.runs:
      if _hf_export.FORMAT in decl.formats:
        members.append(_hf_export.export_hf(ctx, run, ctx.run_dir(decl.name)))
      if not formats:
        continue
      entry = export_run(ctx, run, ctx.run_dir(decl.name), formats=formats,
                         batch_size=decl.batch_size)
      # The ONNX artifact's onnxruntime latency at batch 1 and 32 (ms) on this machine.
      latency = (export_lib.onnx_latency(entry["onnx"], entry["input_shape"][1:])
                 if entry.get("onnx") else {})
      members.append({"run": run, "accuracy": entry["accuracy"],
                      "max_abs_diff": entry["max_abs_diff"], "size_bytes": entry["size_bytes"],
                      **latency})
    return {"members": members}

  return RunPlan(name=decl.name, total_steps=0, init_state=None, make_runner=None,
                 data=ctx.data, evaluate=evaluate,
                 summary=lambda host: {"formats": list(decl.formats)},
                 batch_size=ctx.config.batch_size, seed=ctx.config.seed)


KIND = base.RunKind(Export, plan)

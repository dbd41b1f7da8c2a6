"""After distillation: the pruned and the int8 student, and the export of every student.

``config.compress`` adds runs after ``student_kd`` to the standard pipeline, each starting from
the distilled student and distilling further from the same teacher (so every objective, the
checkpoints and the exact resume work unchanged):

* ``student_kd_pruned`` (``compress.pruning`` > 0): gradual magnitude pruning to that sparsity
  (:func:`kdjax.compress.magnitude_pruning`, chained after the optimizer, its masks in the
  optimizer state); its entry adds ``sparsity`` (over the pruned layers), ``nonzero`` and
  ``sparsity_layers``.
* ``student_kd_int8`` (``compress.quantization`` = ``'qat'``): quantization-aware distillation
  of the student wrapped by :func:`kdjax.compress.qat`; its entry adds ``ptq_accuracy``, the
  accuracy of post-training quantization of ``student_kd`` with the same rules, for comparison.
  With ``'ptq'`` the run is that post-training quantization alone (evaluated, not trained).

``config.export.formats`` then exports these students (:func:`kdjax.export.export_run`) to
``WORKDIR/export`` and adds each artifact's accuracy and difference from JAX to its entry.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from kdjax import models
from kdjax.train import builders
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.runs import Context, distill, kind, steps_of

QUANTIZATIONS = ("none", "ptq", "qat")


def compress_runs(config: Any) -> list[dict[str, Any]]:
  """The declarations ``config.compress`` adds after ``student_kd``."""
  c = config.compress
  if c.quantization not in QUANTIZATIONS:
    raise ConfigError(f"config.compress.quantization={c.quantization!r}; use one of "
                      f"{QUANTIZATIONS}")
  if not 0.0 <= c.pruning < 1.0:
    raise ConfigError(f"config.compress.pruning={c.pruning!r} is a target sparsity in [0, 1)")
  common = {"model": "student", "teachers": ("teacher",), "init_from": "student_kd"}
  if c.steps:
    common["steps"] = int(c.steps)
  runs = []
  if c.pruning > 0 or c.prune_structure != "unstructured":
    runs.append({"name": "student_kd_pruned", "kind": "compressed", **common, "prune": True})
  if c.quantization == "qat":
    runs.append({"name": "student_kd_int8", "kind": "compressed", **common, "quantize": "qat"})
  elif c.quantization == "ptq":
    runs.append({"name": "student_kd_int8", "kind": "compressed", **common, "quantize": "ptq"})
  return runs


def _module_and_example(ctx: Context):
  section = ctx.section("student")
  module = models.get_model(section.model, num_classes=section.num_classes,
                            dtype=builders.DTYPES[section.dtype],
                            **builders.plain(section.model_kwargs))
  example = jax.ShapeDtypeStruct((1, *ctx.data.shapes.input_shape), jnp.float32)
  return module, example


def _ptq(ctx: Context, trained: models.Model) -> models.Model:
  from kdjax import compress  # pylint: disable=g-import-not-at-top
  c = ctx.config.compress
  module, example = _module_and_example(ctx)
  return compress.ptq(trained, module, example_input=example, weight_bits=c.weight_bits,
                      act_bits=c.act_bits or None, keep_float=tuple(c.keep_float))


@kind("compressed", ("teachers", "objective", "combine", "prune", "quantize"))
def compressed(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  from kdjax import compress  # pylint: disable=g-import-not-at-top
  c = ctx.config.compress
  plan = distill(ctx, {k: v for k, v in decl.items() if k not in ("prune", "quantize")})
  base_init = plan.init_state
  total = steps_of(ctx, decl)
  keep_dense = ("objective/.*",) + tuple(f"student/{p}" for p in c.keep_dense)

  if decl.get("prune"):
    structure = {"unstructured": {}, "2:4": {"structure": "n:m", "n": 2, "m": 4}}
    if c.prune_structure not in structure:
      raise ConfigError(f"config.compress.prune_structure={c.prune_structure!r}; use "
                        "'unstructured' or '2:4'")
    end = c.prune_end or max(1, (3 * total) // 4)
    pruning = compress.magnitude_pruning(
        c.pruning, begin_step=c.prune_begin, end_step=end, frequency=c.prune_frequency,
        keep_dense=keep_dense, **structure[c.prune_structure])

    def init_state():
      state = base_init()
      tx = optax.chain(state.tx, pruning)
      return state.replace(tx=tx, opt_state=_init(tx, state.params))

    summary = plan.summary

    def pruned_summary(host):
      report = compress.sparsity_report(host.params["student"],
                                        keep_dense=tuple(c.keep_dense))
      return {**summary(host), "sparsity": report["pruned_sparsity"],
              "nonzero": report["nonzero"],
              "sparsity_layers": {k: v["sparsity"] for k, v in report["layers"].items()}}

    plan.init_state, plan.summary = init_state, pruned_summary

  if decl.get("quantize") == "qat":
    def init_state():
      state = base_init()
      student = compress.qat(state.student(), weight_bits=c.weight_bits,
                             act_bits=c.act_bits or None, keep_float=tuple(c.keep_float))
      return state.replace(student_apply=student.apply)

    evaluate = plan.evaluate

    def with_ptq(runner, placed):
      metrics = dict(evaluate(runner, placed))
      if placed is not None and not ctx.abstract:
        ptq_model = _ptq(ctx, ctx.trained("student_kd"))
        r = ctx.runner()
        host = runner.host_state(placed)
        view = host.replace(params={**host.params, "student": ptq_model.params},
                            student_apply=ptq_model.apply)
        metrics["ptq_accuracy"] = ctx.data.evaluate(
            r, r.put_state(view), num_classes=ctx.data.shapes.num_classes)["accuracy"]
      return metrics

    plan.init_state, plan.evaluate = init_state, with_ptq

  if decl.get("quantize") == "ptq":
    def init_state():
      state = base_init()
      trained = state.student() if ctx.abstract else _ptq(ctx, ctx.trained("student_kd"))
      return state.replace(params={**state.params, "student": trained.params},
                           student_apply=trained.apply)
    plan.init_state, plan.total_steps = init_state, 0
  return plan


def _init(tx: optax.GradientTransformation, params: Any):
  from kdjax import step as step_lib  # pylint: disable=g-import-not-at-top
  return step_lib.init_optimizer(tx, params)


def export_all(config: Any, workdir: str, results: dict[str, Any]) -> dict[str, Any]:
  """Exports the students to ``WORKDIR/export``; returns the manifest entries by run."""
  formats = tuple(config.export.formats)
  if not formats:
    return {}
  from kdjax import export  # pylint: disable=g-import-not-at-top
  entries = {}
  for run in ("student_kd", "student_kd_pruned", "student_kd_int8"):
    if run in results and os.path.isdir(os.path.join(workdir, run, "checkpoints")):
      entries[run] = export.export_run(workdir, run, formats=formats,
                                       batch_size=config.export.batch_size or None)
  return entries

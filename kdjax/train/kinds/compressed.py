"""``compressed``: a distilled student made smaller, distilled further from the same teachers.

``config.compress`` adds these runs after ``student_kd`` to the standard pipeline
(:func:`declarations`), each starting from the distilled student (``init_from``) so every
objective, the checkpoints and the exact resume work unchanged:

* ``prune=True`` (``student_kd_pruned``, ``compress.pruning`` > 0): gradual magnitude pruning
  to that sparsity (:func:`kdjax.compress.magnitude_pruning`, chained after the optimizer, its
  masks in the optimizer state); its entry adds ``sparsity`` (over the pruned layers),
  ``nonzero`` and ``sparsity_layers``.
* ``quantize='qat'`` (``student_kd_int8``, ``compress.quantization='qat'``): quantization-aware
  distillation of the student wrapped by :func:`kdjax.compress.qat`; its entry adds
  ``ptq_accuracy``, the accuracy of post-training quantization of ``init_from`` with the same
  rules, for comparison. ``quantize='ptq'``: that post-training quantization alone (0 steps).

A quantized run exports its integer-weight form (:meth:`Compressed.export_form`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax import compress
from kdjax import models
from kdjax import step as step_lib
from kdjax.train import builders
from kdjax.train import schema
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base
from kdjax.train.kinds import distill



@dataclasses.dataclass(frozen=True)
class Compressed(distill.Distill):
  prune: bool = False
  quantize: str = ""  # '', 'qat' or 'ptq'

  def export_form(self, ctx: base.Context, trained: models.Model) -> models.Model:
    return ptq(ctx, trained) if self.quantize else trained


def declarations(config: Any, *, after: str) -> list[dict[str, Any]]:
  """The declarations ``config.compress`` adds after the distilled run ``after``."""
  c = config.compress  # Its values are checked by kdjax.train.schema.Compress.
  common = {"kind": "compressed", "model": "student", "teachers": ("teacher",),
            "init_from": after}
  if c.steps:
    common["steps"] = int(c.steps)
  runs = []
  if c.pruning > 0 or c.prune_structure != "unstructured":
    runs.append({"name": f"{after}_pruned", **common, "prune": True})
  if c.quantization in ("qat", "ptq"):
    runs.append({"name": f"{after}_int8", **common, "quantize": c.quantization})
  return runs


def trains(decl: dict[str, Any]) -> bool:
  """Whether a declaration of this kind trains (has a checkpoint to export)."""
  return decl.get("quantize") != "ptq"


def ptq(ctx: base.Context, trained: models.Model) -> models.Model:
  """Post-training int8 quantization of a trained student with ``config.compress``'s rules."""
  c, section = ctx.config.compress, ctx.section("student")
  module = models.get_model(section.model, num_classes=section.num_classes,
                            dtype=schema.DTYPES[section.dtype],
                            **builders.plain(section.model_kwargs))
  example = jax.ShapeDtypeStruct((1, *ctx.data.shapes.input_shape), jnp.float32)
  return compress.ptq(trained, module, example_input=example, weight_bits=c.weight_bits,
                      act_bits=c.act_bits or None, keep_float=tuple(c.keep_float))


def checked_ptq(ctx: base.Context, decl: Compressed, trained: models.Model) -> models.Model:
  """:func:`ptq`, its failure for these bit widths named by its config keys (the pipeline's
  checks run it shape-only, so a bad combination stops before any work)."""
  try:
    return ptq(ctx, trained)
  except ValueError as e:
    c = ctx.config.compress
    detail = " ".join(str(e).split())[:300]
    raise ConfigError(
        f"run '{decl.name}': post-training quantization of the student with "
        f"config.compress.weight_bits={c.weight_bits} and config.compress.act_bits="
        f"{c.act_bits} fails ({detail}); quantized convolutions need equal widths: set "
        f"config.compress.act_bits={c.weight_bits} or config.compress.weight_bits="
        f"{c.act_bits or 8}") from None


def plan(ctx: base.Context, decl: Compressed) -> RunPlan:
  out = distill.plan(ctx, decl)
  summary = out.summary
  out.summary = lambda host: {k: v for k, v in summary(host).items() if k != "baseline"}
  if decl.prune:
    _prune(ctx, decl, out)
  if decl.quantize == "qat":
    _qat(ctx, decl, out)
  elif decl.quantize == "ptq":
    _ptq_only(ctx, decl, out)
  elif decl.quantize:
    raise ConfigError(f"run '{decl.name}': quantize={decl.quantize!r}; use 'qat' or 'ptq'")
  return out


def _prune(ctx: base.Context, decl: Compressed, out: RunPlan) -> None:
  c, init, summary = ctx.config.compress, out.init_state, out.summary
  keep_dense = ("objective/.*",) + tuple(f"student/{p}" for p in c.keep_dense)
  pruning = compress.magnitude_pruning(
      c.pruning, begin_step=c.prune_begin,
      end_step=c.prune_end or max(1, (3 * decl.total_steps(ctx.config)) // 4),
      frequency=c.prune_frequency, keep_dense=keep_dense,
      **schema.PRUNE_STRUCTURES[c.prune_structure])

  def init_state():
    state = init()
    tx = optax.chain(state.tx, pruning)
    return state.replace(tx=tx, opt_state=step_lib.init_optimizer(tx, state.params))

  def pruned_summary(host):
    report = compress.sparsity_report(host.student().params, keep_dense=tuple(c.keep_dense))
    return {**summary(host), "sparsity": report["pruned_sparsity"], "nonzero": report["nonzero"],
            "sparsity_layers": {k: v["sparsity"] for k, v in report["layers"].items()}}

  out.init_state, out.summary = init_state, pruned_summary


def _qat(ctx: base.Context, decl: Compressed, out: RunPlan) -> None:
  c, init, evaluate = ctx.config.compress, out.init_state, out.evaluate

  def init_state():
    state = init()
    if ctx.abstract:  # Its evaluation quantizes init_from after training: check that first.
      checked_ptq(ctx, decl, state.student())
    student = compress.qat(state.student(), weight_bits=c.weight_bits,
                           act_bits=c.act_bits or None, keep_float=tuple(c.keep_float))
    return state.replace(student_apply=student.apply)

  def with_ptq(runner, placed):
    metrics = dict(evaluate(runner, placed))
    if placed is not None and not ctx.abstract:
      r = ctx.runner()
      view = runner.host_state(placed).with_student(
          checked_ptq(ctx, decl, ctx.trained(decl.init_from)))
      metrics["ptq_accuracy"] = ctx.data.evaluate(
          r, r.put_state(view), num_classes=ctx.data.shapes.num_classes)["accuracy"]
    return metrics

  out.init_state, out.evaluate = init_state, with_ptq


def _ptq_only(ctx: base.Context, decl: Compressed, out: RunPlan) -> None:
  init = out.init_state

  def init_state():
    state = init()
    if ctx.abstract:
      checked_ptq(ctx, decl, state.student())  # Shape-only: the bit widths fit the student.
      return state
    return state.with_student(checked_ptq(ctx, decl, ctx.trained(decl.init_from)))

  out.init_state, out.total_steps = init_state, 0


KIND = base.RunKind(Compressed, plan)

"""Quantization with qwix: quantization-aware training (fake-quantized model) and post-training
quantization (integer weights), both as kdjax :class:`~kdjax.models.Model` objects.

qwix quantizes the ``dot_general`` / ``conv_general_dilated`` / ``einsum`` calls made inside
Flax modules (``nn.Dense``, ``nn.Conv``, ``nn.Einsum``, attention projections), choosing a rule
by the calling module's path (``'stage1/dense'``, ``'head'``). Everything else (BatchNorm,
pooling, activations, softmax) stays float.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.compress._deps import require
from kdjax.models import Model, from_linen

_QTYPES = {8: jnp.int8, 4: jnp.int4}


def _qtype(bits: int | None, what: str):
  if bits is None:
    return None
  if bits not in _QTYPES:
    raise ValueError(f"{what}={bits} is not supported; use 8 or 4 (or None for float)")
  return _QTYPES[bits]


def quantization_rules(*, weight_bits: int = 8, act_bits: int | None = 8,
                       keep_float: Sequence[str] = (), training: bool = True) -> list[Any]:
  """qwix rules: every quantizable op at ``weight_bits`` / ``act_bits``, except in the modules
  whose path matches one of ``keep_float``.

  Weights are quantized symmetrically per output channel (absmax), activations dynamically per
  example (absmax), so no calibration statistics are needed.

  Args:
    weight_bits: 8 (int8) or 4 (int4).
    act_bits: 8, 4 or None (weights only).
    keep_float: regular expressions (``re.fullmatch``) over Flax module paths (``'stem/conv'``,
      ``'head'``, ``'stage1/.*'``) whose ops stay in float.
    training: ``qwix.QtRule`` objects (for :func:`qat`) when True, ``qwix.QuantizationRule``
      (for :func:`ptq`) otherwise.

  Returns:
    A list of rules, first match wins.
  """
  qwix = require("qwix")
  rule_cls = qwix.QtRule if training else qwix.QuantizationRule
  for pattern in keep_float:
    re.compile(pattern)
  rules = [rule_cls(module_path=pattern) for pattern in keep_float]  # matched, no qtype: float
  rules.append(rule_cls(module_path=".*", weight_qtype=_qtype(weight_bits, "weight_bits"),
                        act_qtype=_qtype(act_bits, "act_bits")))
  return rules


@contextlib.contextmanager
def _standard_promotion():
  """qwix mixes int32 and float32 arrays and relies on rank broadcasting, which kdjax's tests
  reject globally (strict promotion); its ops run under JAX's standard rules."""
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    yield


def _with_standard_promotion(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with _standard_promotion():
      return fn(*args, **kwargs)
  return wrapped


def _intercepted(apply, provider):
  """``apply`` running with ``provider``'s op interceptors active (qwix's mechanism behind
  ``qwix.quantize_model``, applied to a kdjax apply function instead of a module method)."""
  from qwix._src import interception  # pylint: disable=g-import-not-at-top

  def output_transform(out):
    return provider.process_model_output("__call__", out)

  for factory in provider.get_interceptors():
    apply = interception.wrap_func_intercepted(apply, factory, disable_jit=provider.disable_jit,
                                               output_transform=output_transform)
  return _with_standard_promotion(apply)


def _check_quantized(model: Model, provider, example_input: Any, what: str) -> None:
  """A shape-only call: the model must be Linen-based and at least one op must be quantized."""
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype), example_input)
  try:
    jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=False, rng=None), model.params,
                   model.model_state, spec)
  except (ValueError, AttributeError) as e:
    if "module" in str(e).lower():
      raise ValueError(
          f"{what}: qwix can only quantize ops called inside Flax Linen modules ({e}); build the "
          "model with kdjax.models.from_linen or kdjax.models.create") from None
    raise
  unused = provider.get_unused_rules()
  if unused and unused[-1].module_path == ".*":
    raise ValueError(f"{what}: no Dense/Conv/Einsum op of model {model.name!r} was quantized; "
                     "check keep_float (it may match every module)")


def qat(model: Model, *, weight_bits: int = 8, act_bits: int | None = 8,
        keep_float: Sequence[str] = (), rules: Sequence[Any] | None = None,
        example_input: Any = None) -> Model:
  """The fake-quantized twin of ``model``, for quantization-aware training (qwix ``QtProvider``).

  In the forward pass each quantized op rounds its weights (and activations) to the integer grid
  and back, ``q(x) = s \\cdot \\mathrm{clip}(\\mathrm{round}(x / s), -2^{b-1}, 2^{b-1}-1)`` with
  ``s = \\max|x| / (2^{b-1}-1)`` per channel; the backward pass is the straight-through
  estimator. The parameters stay float32 and keep their structure, so the returned model drops
  into ``kdjax.DistillState.create(student=...)`` and every objective, step and checkpoint works
  unchanged. Deploy the trained parameters with :func:`ptq` (same rules) to store integer
  weights.

  Limit: under ``jax.grad`` qwix tells a weight from an activation by its shape when it cannot
  trace it back to a parameter, so a batch of activations shaped exactly like one of the
  layer's kernels (batch size == fan-in == fan-out) fails with "lhs and rhs cannot be both
  weights"; change the batch size.

  Args:
    model: a Linen-based kdjax model (:func:`kdjax.models.create`, :func:`~kdjax.models.from_linen`).
    weight_bits, act_bits, keep_float: see :func:`quantization_rules`.
    rules: explicit qwix rules instead of the three arguments above.
    example_input: optional input (or ``jax.ShapeDtypeStruct``) with the model's input shape;
      when given, the wrapping is checked now (Linen model, at least one op quantized).

  Returns:
    A :class:`~kdjax.models.Model` with the same params, model state and taps.

  References:
    Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", 2018.
  """
  qwix = require("qwix")
  if rules is None:
    rules = quantization_rules(weight_bits=weight_bits, act_bits=act_bits, keep_float=keep_float)
  provider = qwix.QtProvider(list(rules))
  quantized = Model(apply=_intercepted(model.apply, provider), params=model.params,
                    model_state=model.model_state, taps=model.taps,
                    name=f"{model.name}_qat" if model.name else "qat")
  if example_input is not None:
    _check_quantized(quantized, provider, example_input, "qat")
  return quantized


def _mode_kwargs(module: nn.Module) -> dict[str, bool]:
  parameters = inspect.signature(type(module).__call__).parameters
  if "train" in parameters:
    return {"train": False}
  if "deterministic" in parameters:
    return {"deterministic": True}
  return {}


def ptq(model: Model, module: nn.Module, *, example_input: Any, weight_bits: int = 8,
        act_bits: int | None = 8, keep_float: Sequence[str] = (),
        rules: Sequence[Any] | None = None) -> Model:
  """Post-training quantization of a trained model (qwix ``PtqProvider``): integer weights.

  The quantized layers' kernels become qwix ``QArray`` s (an ``int8``/``int4`` array plus a
  float32 per-channel scale) inside ``params``, and their ops run on integers (activations are
  quantized dynamically per example). Evaluation only (``train=False``). The cheap alternative
  to :func:`qat`, and the way to store a QAT-trained model's weights as integers.

  Args:
    model: the trained kdjax model (its ``params`` and ``model_state`` are quantized / kept).
    module: the Flax Linen module ``model`` was built from, e.g.
      ``kdjax.models.get_model(name, num_classes=..., **model_kwargs)``.
    example_input: an input (or ``jax.ShapeDtypeStruct``) with a batch axis, for a shape-only
      trace.
    weight_bits, act_bits, keep_float, rules: see :func:`quantization_rules`. qwix's PTQ
      convolutions need ``act_bits == weight_bits``.

  Returns:
    A :class:`~kdjax.models.Model` with quantized params and the same model state and taps.
  """
  qwix = require("qwix")
  if not isinstance(module, nn.Module):
    raise TypeError(f"ptq takes the model's flax.linen.Module, got {type(module).__name__}; build "
                    "it with kdjax.models.get_model(name, num_classes=..., **model_kwargs)")
  if rules is None:
    rules = quantization_rules(weight_bits=weight_bits, act_bits=act_bits, keep_float=keep_float,
                               training=False)
  quantized_module = qwix.quantize_model(module, qwix.PtqProvider(list(rules)))
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype), example_input)
  with _standard_promotion():
    abstract = jax.eval_shape(
        lambda x: quantized_module.init(jax.random.key(0), x, **_mode_kwargs(module)), spec)
  try:
    with _standard_promotion():
      params = qwix.quantize_params(model.params, abstract["params"])
  except ValueError as e:
    raise ValueError(f"ptq: the params of model {model.name!r} do not fit the module "
                     f"{type(module).__name__} ({e}); pass the module the model was built "
                     "from") from None
  quantized = from_linen(quantized_module, {"params": params, **model.model_state},
                         taps=model.taps, name=f"{model.name}_ptq" if model.name else "ptq")
  return dataclasses.replace(quantized, apply=_with_standard_promotion(quantized.apply))

"""Shared plumbing for the losses: input checks at the boundary, masks, the masked mean and
numerically safe primitives.

Checks run in Python on static shapes and dtypes, so they raise at trace time with a message that
names the fix, never inside a compiled program.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def check_floating(x: jax.Array, what: str = "logits") -> None:
  """Refuses integer, boolean and complex arrays where real-valued scores are expected.

  Casting them silently would hide a bug (integer logits are usually labels passed by mistake)
  or lose data (a complex array's imaginary part).
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    kind = ("complex" if jnp.issubdtype(x.dtype, jnp.complexfloating) else
            "boolean" if x.dtype == jnp.bool_ else
            "integer" if jnp.issubdtype(x.dtype, jnp.integer) else "non-floating")
    raise TypeError(f"{what} must be floating-point, got {kind} dtype {x.dtype} (shape "
                    f"{x.shape}); pass the model's real-valued outputs, or cast on purpose with "
                    ".astype(jnp.float32)")


def as_float(*arrays: jax.typing.ArrayLike,
             what: str = "logits and features") -> tuple[jax.Array, ...]:
  """Casts floating arrays to one compute dtype: float32, or float64 when any input is float64.

  Low-precision inputs (bfloat16, float16) are upcast so that every loss computes in float32;
  float64 stays float64 so that gradient checks under x64 are exact. Integer, boolean and
  complex inputs raise ``TypeError`` (see :func:`check_floating`).
  """
  arrays = tuple(jnp.asarray(a) for a in arrays)
  for a in arrays:
    check_floating(a, what)
  dtype = jnp.float64 if any(a.dtype == jnp.float64 for a in arrays) else jnp.float32
  return tuple(a.astype(dtype) for a in arrays)


def check_temperature(temperature: Any) -> None:
  """The one temperature check: a scalar and, when its value is known, finite and > 0.

  Python numbers and concrete arrays are checked here, at the public boundary (a loss, or a term
  built from a config), so ``T = 0``, ``T < 0`` or ``T = inf`` never becomes NaN or a plausible
  wrong loss inside ``jit``. A traced temperature (a schedule) has no value at trace time; its
  range is checked at run time by checked steps.
  """
  if callable(temperature):
    return  # A schedule ``step -> T``: its values are traced.
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar, got shape {jnp.shape(temperature)}; "
                     "pass one temperature for the whole batch (e.g. temperature=4.0)")
  if isinstance(temperature, jax.core.Tracer):
    # Its value exists only at run time: checked there by kdjax.checked steps (checkify), and
    # free (dropped from the program) in unchecked ones.
    checkify.debug_check(
        jnp.logical_and(temperature > 0, jnp.isfinite(temperature)),
        "the temperature is {t}; it must be finite and > 0 (check the temperature schedule)",
        t=temperature)
    return
  if isinstance(temperature, (numbers.Number, np.ndarray, np.generic, jax.Array)):
    value = float(temperature)
    if not 0.0 < value < math.inf:
      raise ValueError(f"temperature must be > 0 and finite, got {value}; typical values are "
                       "1-8 (e.g. temperature=4.0)")


def check_fraction(value, name: str, *, upper_inclusive: bool = True) -> None:
  """Refuses a Python-number ``value`` outside [0, 1] (or [0, 1))."""
  if isinstance(value, numbers.Number):
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
      upper = "1]" if upper_inclusive else "1)"
      raise ValueError(f"{name} must be in [0, {upper}, got {value}")


def check_not_empty(shape: tuple[int, ...], what: str = "logits") -> None:
  """Refuses a batch with no example (a leading size 0) before a mean divides by zero."""
  if 0 in tuple(shape):
    raise ValueError(f"the batch is empty: {what} have shape {tuple(shape)}; a batch needs at "
                     "least one example (drop empty batches, or pad them and mask the padding)")


def check_logits_pair(student: jax.Array, teacher: jax.Array, what: str = "logits") -> None:
  """Student and teacher logits must agree on the class count and on the batch shape."""
  if student.ndim < 1 or teacher.ndim < 1:
    raise ValueError(f"{what} need a class axis; got student shape {student.shape} and teacher "
                     f"shape {teacher.shape}")
  check_not_empty(student.shape[:-1], f"student {what}")
  if student.shape[-1] != teacher.shape[-1]:
    raise ValueError(f"student {what} have {student.shape[-1]} classes but teacher {what} have "
                     f"{teacher.shape[-1]}; give both models the same num_classes (vocabulary)")
  if student.shape[:-1] != teacher.shape[:-1]:
    raise ValueError(f"student {what} have batch shape {student.shape[:-1]} but teacher {what} "
                     f"have {teacher.shape[:-1]}; feed both models the same batch")


def check_labels(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """Integer labels of shape ``logits.shape[:-1]``; returns them as int32."""
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}; for one-hot "
                     "or soft labels pass jnp.argmax(labels, axis=-1)")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels have shape {labels.shape} but logits have shape {logits.shape}; "
                     f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}")
  return labels.astype(jnp.int32)


def check_mask(mask: jax.typing.ArrayLike | None, shape: tuple[int, ...],
               what: str = "the per-example loss") -> jax.Array | None:
  """A validity mask for values of ``shape``, returned as a bool array of exactly that shape.

  The mask must have the batch's leading shape exactly: ``shape`` itself (one flag per example,
  or per token of a ``[B, L]`` batch) or ``shape[:1]`` (one flag per sequence, broadcast over its
  positions). Anything else, e.g. a ``[B, 1]`` mask for ``[B]`` values, is a ``ValueError``
  naming both shapes rather than a broadcast that would silently change the loss.
  ``None`` stays ``None``.
  """
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  shape = tuple(shape)
  if mask.shape == shape:
    return mask.astype(bool)
  if len(shape) > 1 and mask.shape == shape[:1]:
    return jnp.broadcast_to(mask.astype(bool).reshape(shape[:1] + (1,) * (len(shape) - 1)),
                            shape)
  allowed = f"{shape}" if len(shape) <= 1 else f"{shape} (per token) or {shape[:1]} (per sequence)"
  raise ValueError(f"mask has shape {mask.shape} for {what} of shape {shape}; a mask must have "
                   f"the batch's leading shape exactly: {allowed}. Reshape it (e.g. a [B, 1] mask "
                   "with mask[:, 0]) rather than relying on broadcasting")


def check_sparse_target(logits: jax.Array, values: jax.Array, indices: jax.typing.ArrayLike, *,
                        names: tuple[str, str], source: str) -> jax.Array:
  """A sparse teacher target: ``[..., k]`` values at ``[..., k]`` vocabulary indices.

  The indices must be integers of the values' shape, and both must share ``logits``' leading
  axes (``[..., vocab]`` vs ``[..., k]``). ``names`` are the values' and the indices' argument
  names, ``source`` the function whose two outputs they are. Returns the indices as int32.
  """
  values_name, indices_name = names
  idx = jnp.asarray(indices)
  if not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"{indices_name} must be integer vocabulary indices, got dtype {idx.dtype}")
  if values.shape != idx.shape:
    raise ValueError(f"{values_name} have shape {values.shape} but {indices_name} have "
                     f"{idx.shape}; pass both outputs of {source}")
  if logits.ndim < 1 or values.ndim != logits.ndim or values.shape[:-1] != logits.shape[:-1]:
    raise ValueError(f"student logits have shape {logits.shape} but {values_name} have "
                     f"{values.shape}; they must share the leading axes, [..., vocab] vs [..., k]")
  return idx.astype(jnp.int32)


def checked_positions(logits: jax.Array, *others: jax.Array, temperature: Any,
                      mask: jax.typing.ArrayLike | None,
                      what: str = "the per-token loss (logits.shape[:-1])",
                      ) -> tuple[jax.Array, ...]:
  """The checks of a loss over the positions ``logits.shape[:-1]``, then its masked inputs.

  At least one position (:func:`check_not_empty`), a valid ``temperature``
  (:func:`check_temperature`) and a ``mask`` of those positions (:func:`check_mask`). Returns
  ``logits`` and ``others`` (``[*positions, ...]`` arrays) with masked positions zeroed
  (:func:`mask_inputs`), then the bool mask (or ``None``).
  """
  check_not_empty(logits.shape[:-1])
  check_temperature(temperature)
  mask = check_mask(mask, logits.shape[:-1], what)
  return (*mask_inputs(mask, logits, *others), mask)


def mask_inputs(mask: jax.Array | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Replaces ``[*mask.shape, ...]`` arrays by 0 at masked positions before any math.

  Padding may hold anything (``-inf``, NaN); zeroing it first keeps it out of the gradient
  as well as the value (a `where` on the output alone does not: ``0 * nan = nan``).
  """
  if mask is None:
    return arrays
  out = []
  for x in arrays:
    m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    out.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
  return tuple(out)


def apply_mask(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  # `where`, not a product, so a NaN or inf at a padded position cannot leak into the result.
  return values if mask is None else jnp.where(mask, values, jnp.zeros((), values.dtype))


def logits_pair(student_logits: jax.typing.ArrayLike, teacher_logits: jax.typing.ArrayLike,
                mask: jax.typing.ArrayLike | None, temperature: Any = None,
                ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """The checked float student/teacher logits with masked positions zeroed, and the bool mask.

  ``[B, C]`` and ``[B, L, V]`` (any ``[..., C]``) alike; the mask has shape
  ``logits.shape[:-1]`` (or ``[B]``). ``temperature``, when given, is checked too.
  """
  s, t = as_float(student_logits, teacher_logits, what="logits")
  check_logits_pair(s, t)
  if temperature is not None:
    check_temperature(temperature)
  mask = check_mask(mask, s.shape[:-1], "the per-example loss (logits.shape[:-1])")
  s, t = mask_inputs(mask, s, t)
  return s, t, mask


def masked_mean(values: jax.typing.ArrayLike,
                mask: jax.typing.ArrayLike | Mapping[str, Any] | None = None,
                mask_key: str | None = "mask") -> jax.Array:
  r"""Mean of per-example (or per-token) ``values`` over the positions ``mask`` keeps.

  .. math::
    \frac{\sum_i m_i v_i}{\max(\sum_i m_i, 1)}

  Args:
    values: per-example values ``[B]`` or per-token values ``[B, L]`` (any shape ``[B, ...]``);
      float, or bool / integer (counted as 0 / 1, e.g. correct predictions).
    mask: bool or 0/1, shape ``values.shape`` or ``[B]`` (one flag per sequence, broadcast over
      its positions); ``None`` keeps every position. A batch (a mapping of arrays) may be given
      instead: its ``mask_key`` entry is the mask (none: every position).
    mask_key: with a batch, the key of its mask; ``None`` ignores the batch's mask.

  Returns:
    A scalar, float32 (float64 for float64 values); 0 when the mask keeps nothing.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.masked_mean(jnp.array([[1.0, 3.0, 100.0]]), jnp.array([[1, 1, 0]]))
    Array(2., dtype=float32)

  Convention: a token-weighted mean (every kept token counts once, whatever its sequence); a
  masked position never reaches the result, even when it holds NaN or inf. A mask of any other
  shape (e.g. ``[B, 1]``) is a ``ValueError``.
  """
  if isinstance(mask, Mapping):
    mask = mask.get(mask_key) if mask_key is not None else None
  v = jnp.asarray(values)
  if jnp.issubdtype(v.dtype, jnp.complexfloating):
    raise TypeError(f"masked_mean takes real values, got dtype {v.dtype}")
  v = v.astype(jnp.float64 if v.dtype == jnp.float64 else jnp.float32)
  check_not_empty(v.shape, "the values")
  m = check_mask(mask, v.shape, "the values")
  if m is None:
    return jnp.mean(v)
  total = jnp.sum(jnp.where(m, v, jnp.zeros((), v.dtype)))
  return total / jnp.maximum(jnp.sum(m.astype(v.dtype)), jnp.ones((), v.dtype))


def log_softmax(logits: jax.Array, temperature) -> jax.Array:
  """``log softmax(z / T)`` along the last axis, in the dtype of ``logits``."""
  return jax.nn.log_softmax(logits / jnp.asarray(temperature, logits.dtype), axis=-1)


def kl_terms(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """Elementwise ``p (log p - log q)``, exactly 0 where ``p == 0`` (values and gradients).

  The inner `where` keeps ``-inf - -inf`` and ``0 * inf`` out of both the value and the
  gradient when a class has zero probability (e.g. a masked vocabulary entry).
  """
  p = jnp.exp(log_p)
  diff = jnp.where(p > 0, log_p - log_q, jnp.zeros((), log_p.dtype))
  return p * diff


def kl_from_log_probs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """``KL(p || q)`` summed over the last axis."""
  return jnp.sum(kl_terms(log_p, log_q), axis=-1)


def logaddexp(a: jax.Array, b: jax.Array) -> jax.Array:
  """``log(exp(a) + exp(b))`` whose gradient is 0, not NaN, where both are ``-inf``."""
  both = (a == -jnp.inf) & (b == -jnp.inf)
  zero = jnp.zeros((), a.dtype)
  out = jnp.logaddexp(jnp.where(both, zero, a), jnp.where(both, zero, b))
  return jnp.where(both, jnp.full((), -jnp.inf, a.dtype), out)


def js_from_log_probs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """Jensen-Shannon divergence ``(KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``."""
  log_m = logaddexp(log_p, log_q) - jnp.log(jnp.asarray(2.0, log_p.dtype))
  return 0.5 * (kl_from_log_probs(log_p, log_m) + kl_from_log_probs(log_q, log_m))


def safe_norm(x: jax.Array, axis, keepdims: bool = False) -> jax.Array:
  """Euclidean norm whose gradient at the zero vector is 0 rather than NaN."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, jnp.ones((), sq.dtype))),
                   jnp.zeros((), sq.dtype))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||, eps)`` along ``axis``; the zero vector maps to zero."""
  return x / jnp.maximum(safe_norm(x, axis=axis, keepdims=True), eps)


def smooth_l1(x: jax.Array) -> jax.Array:
  """Huber loss with delta 1: ``x^2 / 2`` for ``|x| < 1``, else ``|x| - 1/2``."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def flatten_batch(x: jax.Array, name: str) -> jax.Array:
  """``[B, ...] -> [B, D]``."""
  if x.ndim < 2:
    raise ValueError(f"{name} must have a batch axis and at least one feature axis, got shape "
                     f"{x.shape}; pass [batch, features] (or [batch, ..., channels]) arrays")
  return x.reshape(x.shape[0], -1)


def check_same_batch(student: jax.Array, teacher: jax.Array, what: str) -> None:
  if student.ndim < 1 or teacher.ndim < 1 or student.shape[0] != teacher.shape[0]:
    raise ValueError(f"student {what} have batch size {student.shape[:1]} but teacher {what} "
                     f"have {teacher.shape[:1]}; feed both models the same batch")
  check_not_empty(student.shape[:1], f"student {what}")

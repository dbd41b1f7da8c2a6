"""Shared plumbing for the losses: input checks at the boundary and numerically safe primitives.

Checks run in Python on static shapes, so they raise at trace time with a message that names
the fix, never inside a compiled program.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def as_float(*arrays: jax.typing.ArrayLike) -> tuple[jax.Array, ...]:
  """Casts arrays to one compute dtype: float32, or float64 when any input is float64.

  Low-precision inputs (bfloat16, float16) are upcast so that every loss computes in float32;
  float64 stays float64 so that gradient checks under x64 are exact.
  """
  arrays = tuple(jnp.asarray(a) for a in arrays)
  dtype = jnp.float64 if any(a.dtype == jnp.float64 for a in arrays) else jnp.float32
  return tuple(a.astype(dtype) for a in arrays)


def check_temperature(temperature) -> None:
  """Refuses a non-scalar temperature and, when its value is known, one that is not > 0."""
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar, got shape {jnp.shape(temperature)}; "
                     "pass one temperature for the whole batch (e.g. temperature=4.0)")
  if isinstance(temperature, jax.core.Tracer):
    return  # A traced (scheduled) temperature cannot be inspected; its caller owns its range.
  if isinstance(temperature, numbers.Number) or isinstance(temperature, (np.ndarray, jax.Array)):
    if not float(temperature) > 0:
      raise ValueError(f"temperature must be > 0, got {float(temperature)}; typical values are "
                       "1-8 (e.g. temperature=4.0)")


def check_fraction(value, name: str, *, upper_inclusive: bool = True) -> None:
  """Refuses a Python-number ``value`` outside [0, 1] (or [0, 1))."""
  if isinstance(value, numbers.Number):
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
      upper = "1]" if upper_inclusive else "1)"
      raise ValueError(f"{name} must be in [0, {upper}, got {value}")


def check_logits_pair(student: jax.Array, teacher: jax.Array, what: str = "logits") -> None:
  """Student and teacher logits must agree on the class count and on the batch shape."""
  if student.ndim < 1 or teacher.ndim < 1:
    raise ValueError(f"{what} need a class axis; got student shape {student.shape} and teacher "
                     f"shape {teacher.shape}")
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


def check_mask(mask, values_shape: tuple[int, ...]) -> jax.Array | None:
  """A per-position mask of shape ``values_shape``, returned as bool (``None`` stays ``None``)."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if mask.shape != tuple(values_shape):
    raise ValueError(f"mask has shape {mask.shape} but the per-token loss has shape "
                     f"{tuple(values_shape)}; pass a [batch, length] mask matching the logits' "
                     "leading axes")
  return mask.astype(bool)


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

"""The student's cross-entropy against a sparse teacher target: ``k`` (index, weight) pairs per
token, e.g. entries sampled from the teacher's distribution (``kdjax.lm.sample_teacher_targets``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def sampled_cross_entropy(student_logits: jax.typing.ArrayLike,
                          indices: jax.typing.ArrayLike,
                          weights: jax.typing.ArrayLike,
                          *,
                          temperature: jax.typing.ArrayLike = 1.0,
                          mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-token cross-entropy of the student against a sparse target of ``k`` weighted entries.

  With the student's ``log p_s^T = log softmax(z_s / T)`` over its full vocabulary:

  .. math::
    \ell = -T^2 \sum_{i=1}^{k} w_i \log p_s^T[\mathrm{idx}_i]

  The entries need not be distinct (a repeated index counts with the sum of its weights) and
  the weights need not sum to 1 (an unbiased sampled target sums to 1 only on average). With
  the teacher's full distribution as target (``idx = 0..V-1``, ``w = p_t^T``) it is
  :func:`kdjax.losses.soft_cross_entropy`.

  Args:
    student_logits: ``[B, L, V]`` student logits (any ``[..., V]``).
    indices: int ``[B, L, k]`` vocabulary indices of the target entries, in ``[0, V)``.
    weights: ``[B, L, k]`` their non-negative weights.
    temperature: ``T > 0`` of the student's softmax (sample the target at the same ``T``).
    mask: ``[B, L]`` (or ``[B]``) flags of the real tokens; padding returns exactly 0.

  Returns:
    One value per token, ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.zeros((1, 1, 4))
    >>> losses.sampled_cross_entropy(z, jnp.array([[[0, 2]]]), jnp.array([[[0.5, 0.5]]]))
    Array([[1.3862944]], dtype=float32)

  References:
    Gemma Team, "Gemma 3 Technical Report", 2025 (distillation from 256 sampled logits per
    token, the target renormalised over them).

  Convention: the weights are the targets; scaled by ``T^2`` like
  :func:`kdjax.losses.soft_cross_entropy`.
  """
  s, w = _utils.as_float(student_logits, weights, what="logits and target weights")
  idx = _utils.check_sparse_target(s, w, indices, names=("weights", "indices"),
                                   source="kdjax.lm.sample_teacher_targets")
  s, w, mask = _utils.checked_positions(s, w, temperature=temperature, mask=mask)
  temp = jnp.asarray(temperature, s.dtype)
  log_p = jnp.take_along_axis(_utils.log_softmax(s, temp), idx, axis=-1)
  return _utils.apply_mask(-(temp**2) * jnp.sum(w * log_p, axis=-1), mask)

"""Feature-based losses: the student matches the teacher's intermediate representations.

Feature maps are channel-last, ``[batch, *spatial, channels]`` (e.g. ``[B, H, W, C]`` for
convolutions, ``[B, L, D]`` for sequences). Losses are per-example, shape ``[batch]``.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def _check_maps(student: jax.Array, teacher: jax.Array, loss: str) -> None:
  """Channel-last maps with a spatial axis whose batch and spatial sizes agree."""
  for name, x in (("student", student), ("teacher", teacher)):
    if x.ndim < 3:
      raise ValueError(f"{loss} needs channel-last feature maps [batch, *spatial, channels]; "
                       f"the {name} features have shape {x.shape}; tap a convolutional (or "
                       "sequence) stage rather than a pooled vector")
  if student.shape[:-1] != teacher.shape[:-1]:
    raise ValueError(f"{loss}: student features have batch and spatial shape "
                     f"{student.shape[:-1]} but teacher features have {teacher.shape[:-1]}; "
                     "tap stages with the same resolution, or resize/pool one side first "
                     "(channel counts may differ)")


def feature_mse(student_feat: jax.typing.ArrayLike,
                teacher_feat: jax.typing.ArrayLike) -> jax.Array:
  r"""Mean squared error between (already regressed) student features and teacher features.

  .. math::
    \ell_b = \frac{1}{D} \sum_{d} (f_s[b, d] - f_t[b, d])^2

  over all ``D`` non-batch entries.

  Args:
    student_feat: student features, shape ``[batch, ...]``, after any trainable regressor.
    teacher_feat: teacher features, same shape.

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.feature_mse(jnp.ones((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 3)))
    Array([1., 1.], dtype=float32)

  References:
    A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets: Hints for
    Thin Deep Nets", 2015.

  Convention: mean (not sum) over the non-batch axes. The FitNets regressor is a trainable
  adapter applied to the student's features before this loss, not part of it.
  """
  s, t = _utils.as_float(student_feat, teacher_feat)
  if s.shape != t.shape:
    raise ValueError(f"student features have shape {s.shape} but teacher features have "
                     f"{t.shape}; map the student onto the teacher's shape with an adapter "
                     "(regressor), e.g. objectives.fitnets(..., adapter='linear')")
  if s.ndim < 1:
    raise ValueError(f"features need a batch axis, got shape {s.shape}")
  sq = jnp.square(s - t).reshape(s.shape[0], -1)
  return jnp.mean(sq, axis=1)


def attention_transfer(student_feat: jax.typing.ArrayLike,
                       teacher_feat: jax.typing.ArrayLike,
                       *,
                       p: float = 2) -> jax.Array:
  r"""Attention transfer: match the normalised spatial attention maps of two feature maps.

  .. math::
    a = \frac{v}{\max(\|v\|_2, 10^{-12})},\quad v[x] = \frac1C \sum_c |f[x, c]|^p,
    \qquad \ell_b = \frac1N \sum_x (a_s[x] - a_t[x])^2

  over the ``N`` spatial positions ``x``.

  Args:
    student_feat: student feature map, shape ``[batch, *spatial, C_s]``.
    teacher_feat: teacher feature map, shape ``[batch, *spatial, C_t]``; the spatial sizes
      must match the student's, the channel counts may differ.
    p: exponent applied to the activations (``> 0``; 2 in the paper).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    >>> wide = jnp.concatenate([f, f], axis=-1)  # more channels, same attention map
    >>> bool(jnp.all(losses.attention_transfer(f, 3.0 * wide) < 1e-10))
    True

  References:
    S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the Performance
    of Convolutional Neural Networks via Attention Transfer", 2017.

  Convention: channel mean (not sum) of ``|f|^p``; squared difference of the L2-normalised
  maps, averaged over positions (the paper's ``beta / 2`` weight belongs to the caller).
  """
  if isinstance(p, numbers.Number) and not p > 0:
    raise ValueError(f"p must be > 0, got {p}; the paper uses p=2")
  s, t = _utils.as_float(student_feat, teacher_feat)
  _check_maps(s, t, "attention_transfer")

  def attention(f):
    v = jnp.mean(jnp.abs(f)**p, axis=-1).reshape(f.shape[0], -1)
    return _utils.l2_normalize(v, axis=1)

  return jnp.mean(jnp.square(attention(s) - attention(t)), axis=1)


def nst(student_feat: jax.typing.ArrayLike,
        teacher_feat: jax.typing.ArrayLike) -> jax.Array:
  r"""Neuron selectivity transfer: polynomial-kernel MMD between channel activation patterns.

  Each channel's activations over the ``N`` spatial positions form a vector, L2-normalised:
  ``u_c = f[:, c] / max(||f[:, c]||, 1e-12)``. With the kernel ``k(x, y) = (x . y)^2``,

  .. math::
    \ell_b = \overline{k(u_t, u_t)} + \overline{k(u_s, u_s)} - 2\,\overline{k(u_s, u_t)}

  where each bar is the mean over all channel pairs (``C_t^2``, ``C_s^2`` and ``C_s C_t``).

  Args:
    student_feat: student feature map, shape ``[batch, *spatial, C_s]``.
    teacher_feat: teacher feature map, shape ``[batch, *spatial, C_t]``; the spatial sizes
      must match, the channel counts may differ.

  Returns:
    Per-example loss (a squared MMD), shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    >>> bool(jnp.all(jnp.abs(losses.nst(f, f)) < 1e-6))
    True

  References:
    Z. Huang, N. Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", 2017.

  Convention: degree-2 polynomial kernel without offset; means, not sums, over channel pairs.
  """
  s, t = _utils.as_float(student_feat, teacher_feat)
  _check_maps(s, t, "nst")

  def channels(f):  # [B, *spatial, C] -> [B, C, N], each channel unit-norm over space.
    f = f.reshape(f.shape[0], -1, f.shape[-1])
    return _utils.l2_normalize(jnp.swapaxes(f, 1, 2), axis=2)

  def kernel_mean(x, y):
    return jnp.mean(jnp.square(jnp.einsum("bin,bjn->bij", x, y)), axis=(1, 2))

  u_s, u_t = channels(s), channels(t)
  return kernel_mean(u_t, u_t) + kernel_mean(u_s, u_s) - 2.0 * kernel_mean(u_s, u_t)


def cosine_distance(student: jax.typing.ArrayLike,
                    teacher: jax.typing.ArrayLike) -> jax.Array:
  r"""One minus the cosine similarity along the last axis (e.g. between hidden states).

  .. math::
    \ell = 1 - \frac{\langle s, t \rangle}{\max(\|s\|, 10^{-8})\, \max(\|t\|, 10^{-8})}

  Args:
    student: student vectors, shape ``[..., D]``.
    teacher: teacher vectors, same shape.

  Returns:
    Per-position loss, shape ``student.shape[:-1]``, float32, in ``[0, 2]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.cosine_distance(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 3.0]]))
    Array([1.], dtype=float32)

  References:
    V. Sanh, L. Debut, J. Chaumond, T. Wolf, "DistilBERT, a distilled version of BERT:
    smaller, faster, cheaper and lighter", 2019.

  Convention: a zero vector has cosine 0 with everything (loss 1).
  """
  s, t = _utils.as_float(student, teacher)
  if s.shape != t.shape:
    raise ValueError(f"student vectors have shape {s.shape} but teacher vectors have {t.shape}; "
                     "project the student onto the teacher's width with an adapter, e.g. "
                     "objectives.cosine(..., adapter='linear')")
  if s.ndim < 1:
    raise ValueError(f"cosine_distance needs a feature axis, got shape {s.shape}")
  cos = jnp.sum(_utils.l2_normalize(s, eps=1e-8) * _utils.l2_normalize(t, eps=1e-8), axis=-1)
  return 1.0 - cos

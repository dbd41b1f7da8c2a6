"""Feature-based losses: the student matches the teacher's intermediate representations.

Feature maps are channel-last, ``[batch, *spatial, channels]`` (e.g. ``[B, H, W, C]`` for
convolutions, ``[B, L, D]`` for sequences). Losses are per-example, shape ``[batch]``.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses import _utils


def _check_maps(student: jax.Array, teacher: jax.Array, loss: str) -> None:
  """Channel-last maps with a spatial axis and the same batch size and number of spatial axes."""
  for name, x in (("student", student), ("teacher", teacher)):
    if x.ndim < 3:
      raise ValueError(f"{loss} needs channel-last feature maps [batch, *spatial, channels]; "
                       f"the {name} features have shape {x.shape}; tap a convolutional (or "
                       "sequence) stage rather than a pooled vector")
  if student.shape[0] != teacher.shape[0] or student.ndim != teacher.ndim:
    raise ValueError(f"{loss}: student features have shape {student.shape} but teacher features "
                     f"have {teacher.shape}; both need the same batch size and the same number "
                     "of spatial axes (channel counts and spatial sizes may differ)")


def _pool_matrix(n_in: int, n_out: int, dtype) -> jax.Array:
  """``[n_out, n_in]`` averaging weights of PyTorch's adaptive average pooling along one axis.

  Output cell ``k`` averages inputs ``floor(k n_in / n_out)`` to ``ceil((k + 1) n_in / n_out)``
  (exclusive), so for ``n_in`` a multiple of ``n_out`` it is plain average pooling.
  """
  m = np.zeros((n_out, n_in), np.float64)
  for k in range(n_out):
    lo, hi = (k * n_in) // n_out, -((-(k + 1) * n_in) // n_out)
    m[k, lo:hi] = 1.0 / (hi - lo)
  return jnp.asarray(m, dtype)


def adaptive_avg_pool(x: jax.typing.ArrayLike, spatial: int | tuple[int, ...]) -> jax.Array:
  r"""Adaptive average pooling of a channel-last map to the spatial size ``spatial``.

  .. math::
    y[k] = \frac{1}{e_k - s_k} \sum_{i = s_k}^{e_k - 1} x[i],\quad
    s_k = \lfloor k n / m \rfloor,\ e_k = \lceil (k + 1) n / m \rceil

  along each spatial axis (input size ``n``, output size ``m``), exactly as PyTorch's
  ``F.adaptive_avg_pool2d`` on NCHW.

  Args:
    x: feature map, shape ``[batch, *spatial_in, channels]``.
    spatial: the output spatial shape, one size per spatial axis of ``x``, each ``<=`` the input's;
      an int is that size along every spatial axis.

  Returns:
    The pooled map, shape ``[batch, *spatial, channels]``, in ``x``'s dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.adaptive_avg_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), (2, 2))[0, :, :, 0]
    Array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
  """
  x = jnp.asarray(x)
  if isinstance(spatial, numbers.Integral):
    spatial = (int(spatial),) * (x.ndim - 2)
  spatial = tuple(int(s) for s in spatial)
  if len(spatial) != x.ndim - 2:
    raise ValueError(f"adaptive_avg_pool: a map of shape {x.shape} has {x.ndim - 2} spatial axes, "
                     f"but the target size {spatial} has {len(spatial)}")
  for axis, size in enumerate(spatial, start=1):
    if size == x.shape[axis]:
      continue
    if not 0 < size <= x.shape[axis]:
      raise ValueError(f"adaptive_avg_pool only shrinks a map: axis {axis} has size "
                       f"{x.shape[axis]}, asked for {size}")
    m = _pool_matrix(x.shape[axis], size, x.dtype)
    x = jnp.moveaxis(jnp.tensordot(m, x, axes=((1,), (axis,))), 0, axis)
  return x


def match_spatial(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Adaptive-average-pools the larger of two channel-last maps to the other's spatial size.

  What the reference implementations (RepDistiller's AT, NST, VID, FT, FSP) do when the student's
  and the teacher's maps differ in resolution; maps of equal spatial shape pass through. When one
  map is larger along some axes and smaller along others, each axis is pooled to the smaller size.
  """
  if student.shape[1:-1] == teacher.shape[1:-1]:
    return student, teacher
  target = tuple(min(a, b) for a, b in zip(student.shape[1:-1], teacher.shape[1:-1]))
  return adaptive_avg_pool(student, target), adaptive_avg_pool(teacher, target)


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
  adapter applied to the student's features before this loss, not part of it. Channel-last maps
  with equal channels but different spatial sizes are compared after adaptive-average-pooling the
  larger one (:func:`match_spatial`).
  """
  s, t = _utils.as_float(student_feat, teacher_feat)
  if (s.shape != t.shape and s.ndim >= 3 and s.ndim == t.ndim and s.shape[0] == t.shape[0]
      and s.shape[-1] == t.shape[-1]):
    s, t = match_spatial(s, t)  # Maps of different resolution: pool the larger (hint terms).
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
                       p: float = 2,
                       signed: bool = False) -> jax.Array:
  r"""Attention transfer: match the normalised spatial attention maps of two feature maps.

  .. math::
    a = \frac{v}{\max(\|v\|_2, 10^{-12})},\quad v[x] = \frac1C \sum_c |f[x, c]|^p
    \ (\text{or } f[x, c]^p \text{ with } \texttt{signed=True}),
    \qquad \ell_b = \frac1N \sum_x (a_s[x] - a_t[x])^2

  over the ``N`` spatial positions ``x``.

  Args:
    student_feat: student feature map, shape ``[batch, *spatial, C_s]``.
    teacher_feat: teacher feature map, shape ``[batch, *spatial', C_t]``; channel counts may
      differ; when the spatial sizes differ the larger map is adaptive-average-pooled to the
      smaller's (:func:`match_spatial`), as the reference code does.
    p: exponent applied to the activations (``> 0``; 2 in the paper).
    signed: raise the activations themselves to ``p`` (``f^p``, RepDistiller's
      ``distiller_zoo/AT.py``) instead of their magnitudes (``|f|^p``). The two agree for even
      integer ``p`` and for non-negative (post-ReLU) features; for odd ``p`` on signed features
      they differ, and a non-integer ``p`` on negative values is NaN with ``signed=True``.

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

  Convention: channel mean (not sum) of ``|f|^p`` (the paper's definition; ``signed=True`` for
  RepDistiller's ``f^p``); squared difference of the L2-normalised maps, averaged over positions
  (the paper's ``beta / 2`` weight belongs to the caller). Checked against RepDistiller
  ``distiller_zoo/AT.py`` (``at_loss``: ``(at(f_s) - at(f_t)).pow(2).mean()`` with
  ``at(f) = F.normalize(f.pow(p).mean(1).view(B, -1))``), per example.
  """
  if isinstance(p, numbers.Number) and not p > 0:
    raise ValueError(f"p must be > 0, got {p}; the paper uses p=2")
  s, t = _utils.as_float(student_feat, teacher_feat)
  _check_maps(s, t, "attention_transfer")
  s, t = match_spatial(s, t)

  def attention(f):
    v = jnp.mean((f if signed else jnp.abs(f))**p, axis=-1).reshape(f.shape[0], -1)
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
    teacher_feat: teacher feature map, shape ``[batch, *spatial', C_t]``; channel counts may
      differ; when the spatial sizes differ the larger map is adaptive-average-pooled to the
      smaller's (:func:`match_spatial`), as RepDistiller's ``distiller_zoo/NST.py`` does.

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
  s, t = match_spatial(s, t)

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


# ReviewKD's pyramid: the output sizes of the pooled levels, largest first.
HCL_LEVELS = (4, 2, 1)


def hierarchical_context_loss(student: Sequence[jax.typing.ArrayLike],
                              teacher: Sequence[jax.typing.ArrayLike]) -> jax.Array:
  r"""ReviewKD's hierarchical context loss, per example, summed over stages.

  For each stage, the MSE of the full maps (weight 1) plus the MSE of the maps adaptive-average-
  pooled to 4x4, 2x2 and 1x1, the ``j``-th level used weighted ``2^-j`` (1/2, 1/4, 1/8; a level
  not smaller than the map is skipped and does not halve the weight), divided by the sum of the
  weights used:

  .. math::
    \mathrm{HCL} = \sum_{s} \frac{\mathrm{MSE}(F_s, T_s) + \sum_{j} 2^{-j}\,
                   \mathrm{MSE}(\mathrm{pool}_{l_j}(F_s), \mathrm{pool}_{l_j}(T_s))}
                   {1 + \sum_j 2^{-j}}

  Args:
    student: the (fused) student maps, one ``[B, H, W, C]`` per stage.
    teacher: the teacher maps, the same shapes.

  Returns:
    ``[B]``: each example's loss (MSEs are means over the example's positions and channels).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.ones((2, 8, 8, 3))
    >>> losses.hierarchical_context_loss([f], [f + 1.0])
    Array([1., 1.], dtype=float32)

  References:
    P. Chen, S. Liu, H. Zhao, J. Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.
  """
  if len(student) != len(teacher) or not student:
    raise ValueError(f"hierarchical_context_loss pairs stages one to one: got {len(student)} "
                     f"student and {len(teacher)} teacher maps (at least one each)")

  def mse(a, b):
    d = jnp.square(a - b)
    return jnp.mean(d.reshape(d.shape[0], -1), axis=-1)

  total = None
  for fs, ft in zip(student, teacher):
    fs, ft = _utils.as_float(fs, ft)
    if fs.shape != ft.shape or fs.ndim != 4:
      raise ValueError(f"hierarchical_context_loss compares [B, H, W, C] maps of one shape; got "
                       f"student {fs.shape} and teacher {ft.shape}")
    loss, weight, used = mse(fs, ft), 1.0, 1.0
    for level in HCL_LEVELS:
      if level >= min(fs.shape[1], fs.shape[2]):
        continue
      weight /= 2.0
      loss = loss + weight * mse(adaptive_avg_pool(fs, level), adaptive_avg_pool(ft, level))
      used += weight
    loss = loss / used
    total = loss if total is None else total + loss
  return total

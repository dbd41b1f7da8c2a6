"""Relation-based losses: the student matches how the teacher relates the examples of a batch.

Each loss is defined over the whole batch and returns a scalar. Inputs of shape
``[batch, ...]`` are flattened to ``[batch, D]``; student and teacher widths may differ, their
batch sizes may not. Under data parallelism give them the global batch (``kdjax.objectives``
gathers it under ``pmap``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def _embeddings(student, teacher, loss: str, min_batch: int = 1) -> tuple[jax.Array, jax.Array]:
  s, t = _utils.as_float(student, teacher)
  s = _utils.flatten_batch(s, f"{loss}: the student embeddings")
  t = _utils.flatten_batch(t, f"{loss}: the teacher embeddings")
  _utils.check_same_batch(s, t, "embeddings")
  if s.shape[0] < min_batch:
    raise ValueError(f"{loss} relates examples to each other and needs a batch of at least "
                     f"{min_batch}, got {s.shape[0]}")
  return s, t


def similarity_preserving(student_feat: jax.typing.ArrayLike,
                          teacher_feat: jax.typing.ArrayLike) -> jax.Array:
  r"""Similarity-preserving loss: match the row-normalised batch Gram matrices.

  .. math::
    G = F F^\top,\quad \tilde G_{i,:} = \frac{G_{i,:}}{\max(\|G_{i,:}\|_2, 10^{-12})},
    \qquad \ell = \frac{1}{B^2} \sum_{i,j} (\tilde G_s - \tilde G_t)_{ij}^2

  Args:
    student_feat: student features, shape ``[B, ...]`` (flattened to ``[B, D_s]``).
    teacher_feat: teacher features, shape ``[B, ...]`` (flattened to ``[B, D_t]``).

  Returns:
    A scalar (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> float(losses.similarity_preserving(f, 2.0 * f))
    0.0

  References:
    F. Tung, G. Mori, "Similarity-Preserving Knowledge Distillation", 2019.

  Convention: squared Frobenius distance divided by B^2 (the paper's ``gamma`` weight belongs
  to the caller).
  """
  s, t = _embeddings(student_feat, teacher_feat, "similarity_preserving")

  def gram(f):
    return _utils.l2_normalize(f @ f.T, axis=1)

  b = s.shape[0]
  return jnp.sum(jnp.square(gram(s) - gram(t))) / (b * b)


def _pairwise_distances(f: jax.Array) -> jax.Array:
  sq = jnp.sum(f * f, axis=1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  return jnp.where(jnp.eye(f.shape[0], dtype=bool), jnp.zeros((), f.dtype), d)


def rkd_distance(student_emb: jax.typing.ArrayLike,
                 teacher_emb: jax.typing.ArrayLike) -> jax.Array:
  r"""Relational KD, distance-wise: match normalised pairwise distances.

  .. math::
    d_{ij} = \sqrt{\max(\|f_i - f_j\|^2, 10^{-12})}\ (i \ne j),\ d_{ii} = 0,\quad
    \psi = d / \mu,\ \mu = \frac{1}{B(B-1)} \sum_{i \ne j} d_{ij},
    \qquad \ell = \frac{1}{B^2} \sum_{i,j} \mathrm{smooth}_{L1}(\psi^s_{ij} - \psi^t_{ij})

  with the Huber function ``smooth_L1(x) = x^2/2`` for ``|x| < 1``, else ``|x| - 1/2``.

  Args:
    student_emb: student embeddings, shape ``[B, ...]`` with ``B >= 2``.
    teacher_emb: teacher embeddings, shape ``[B, ...]``.

  Returns:
    A scalar (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    >>> bool(losses.rkd_distance(f, 10.0 * f) < 1e-6)  # scale-invariant
    True

  References:
    W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", 2019.

  Convention: mean over all B^2 entries (diagonal included, where both sides are 0); the
  paper's weight (25 on CIFAR) belongs to the caller.
  """
  s, t = _embeddings(student_emb, teacher_emb, "rkd_distance", min_batch=2)
  b = s.shape[0]

  def normalised(f):
    d = _pairwise_distances(f)
    return d / (jnp.sum(d) / (b * (b - 1)))

  return jnp.mean(_utils.smooth_l1(normalised(s) - normalised(t)))


def rkd_angle(student_emb: jax.typing.ArrayLike,
              teacher_emb: jax.typing.ArrayLike) -> jax.Array:
  r"""Relational KD, angle-wise: match the cosines of the angles formed by example triplets.

  .. math::
    e_{ij} = \frac{f_j - f_i}{\max(\|f_j - f_i\|, 10^{-12})}\ (e_{ii} = 0),\quad
    A_{ijk} = \langle e_{ij}, e_{ik} \rangle,
    \qquad \ell = \frac{1}{B^3} \sum_{i,j,k} \mathrm{smooth}_{L1}(A^s_{ijk} - A^t_{ijk})

  Args:
    student_emb: student embeddings, shape ``[B, ...]``.
    teacher_emb: teacher embeddings, shape ``[B, ...]``.

  Returns:
    A scalar (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    >>> bool(losses.rkd_angle(f, 2.0 * f + 1.0) < 1e-6)  # invariant to scale and shift
    True

  References:
    W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", 2019.

  Convention: mean over all B^3 triplets (degenerate ones included, where both sides are 0);
  memory grows as B^2 D + B^3. The paper's weight (50 on CIFAR) belongs to the caller.
  """
  s, t = _embeddings(student_emb, teacher_emb, "rkd_angle")

  def angles(f):
    e = _utils.l2_normalize(f[None, :, :] - f[:, None, :], axis=2)  # e[i, j] = unit(f_j - f_i)
    return jnp.einsum("ijd,ikd->ijk", e, e)

  return jnp.mean(_utils.smooth_l1(angles(s) - angles(t)))


def pkt(student_emb: jax.typing.ArrayLike,
        teacher_emb: jax.typing.ArrayLike,
        *,
        eps: float = 1e-7) -> jax.Array:
  r"""Probabilistic knowledge transfer: match cosine-similarity distributions over the batch.

  .. math::
    \hat f_i = \frac{f_i}{\|f_i\| + \epsilon},\quad
    S = \tfrac12 (\hat F \hat F^\top + 1),\quad P_{ij} = \frac{S_{ij}}{\sum_k S_{ik}},
    \qquad \ell = \frac{1}{B^2} \sum_{i,j} P^t_{ij} \log\frac{P^t_{ij} + \epsilon}
    {P^s_{ij} + \epsilon}

  Args:
    student_emb: student embeddings, shape ``[B, ...]``.
    teacher_emb: teacher embeddings, shape ``[B, ...]``.
    eps: stabiliser in the normalisation and inside the logarithm.

  Returns:
    A scalar (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> float(losses.pkt(f, f))
    0.0

  References:
    N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", 2018.

  Convention: KL(teacher || student) of the row-conditional distributions, averaged (not
  summed) over all B^2 entries.
  """
  s, t = _embeddings(student_emb, teacher_emb, "pkt")
  eps = jnp.asarray(eps, s.dtype)

  def conditional(f):
    f = f / (_utils.safe_norm(f, axis=1, keepdims=True) + eps)
    sim = 0.5 * (f @ f.T + 1.0)
    return sim / jnp.sum(sim, axis=1, keepdims=True)

  p_s, p_t = conditional(s), conditional(t)
  return jnp.mean(p_t * (jnp.log(p_t + eps) - jnp.log(p_s + eps)))


def cka(student_emb: jax.typing.ArrayLike,
        teacher_emb: jax.typing.ArrayLike) -> jax.Array:
  r"""One minus linear centred kernel alignment between student and teacher representations.

  .. math::
    \ell = 1 - \frac{\|Y^\top X\|_F^2}{\|X^\top X\|_F\, \|Y^\top Y\|_F}

  where ``X`` (``[B, D_s]``) and ``Y`` (``[B, D_t]``) are the embeddings with each column
  centred over the batch.

  Args:
    student_emb: student embeddings, shape ``[B, ...]``.
    teacher_emb: teacher embeddings, shape ``[B, ...]``.

  Returns:
    A scalar in ``[0, 1]`` (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> bool(losses.cka(f, 3.0 * f + 1.0) < 1e-6)
    True

  References:
    S. Kornblith, M. Norouzi, H. Lee, G. Hinton, "Similarity of Neural Network
    Representations Revisited", 2019.

  Convention: linear kernel; a batch whose centred features are all zero has CKA 0 (loss 1).
  Computed from the ``[B, B]`` Gram matrices or the feature cross-products, whichever is
  smaller; both are scale-normalised first, so large activations cannot overflow.
  """
  x, y = _embeddings(student_emb, teacher_emb, "cka")

  def centred_unit(f):
    f = f - jnp.mean(f, axis=0, keepdims=True)
    norm = _utils.safe_norm(f, axis=(0, 1))
    return f / jnp.where(norm > 0, norm, jnp.ones((), f.dtype))  # CKA is scale-invariant.

  x, y = centred_unit(x), centred_unit(y)
  b, d_s, d_t = x.shape[0], x.shape[1], y.shape[1]
  if b * b <= d_s * d_t:
    k_x, k_y = x @ x.T, y @ y.T
    cross = jnp.sum(k_x * k_y)
    self_x, self_y = _utils.safe_norm(k_x, axis=(0, 1)), _utils.safe_norm(k_y, axis=(0, 1))
  else:
    cross = jnp.sum(jnp.square(y.T @ x))
    self_x = _utils.safe_norm(x.T @ x, axis=(0, 1))
    self_y = _utils.safe_norm(y.T @ y, axis=(0, 1))
  denom = self_x * self_y
  positive = denom > 0
  alignment = jnp.where(positive, cross / jnp.where(positive, denom, jnp.ones((), denom.dtype)),
                        jnp.zeros((), denom.dtype))
  return 1.0 - alignment

"""Response-based losses: the student matches the teacher's logits or class distribution.

Every per-example loss here serves ``[B, C]`` classification logits and ``[B, L, V]`` token logits
alike (any ``[..., C]``) and takes an optional ``mask`` of shape ``logits.shape[:-1]`` (or
``[B]``, one flag per sequence): masked positions are zeroed before any math and return exactly 0,
so padding holding NaN or inf reaches neither the loss nor its gradient. Reduce with
:func:`kdjax.losses.masked_mean`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def kd(student_logits: jax.typing.ArrayLike,
       teacher_logits: jax.typing.ArrayLike,
       *,
       temperature: jax.typing.ArrayLike = 1.0,
       mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Knowledge-distillation loss: the temperature-scaled KL from teacher to student.

  .. math::
    \ell = T^2 \, \mathrm{KL}(p_t^T \,\|\, p_s^T)
         = T^2 \sum_c p_t^T[c] \,(\log p_t^T[c] - \log p_s^T[c]),
    \qquad p^T = \mathrm{softmax}(z / T)

  Args:
    student_logits: student logits, shape ``[..., num_classes]``, any float dtype.
    teacher_logits: teacher logits, same shape as ``student_logits``.
    temperature: softmax temperature ``T > 0`` (a scalar; may be traced, e.g. scheduled).
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example (per-token) loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> losses.kd(s, s, temperature=4.0)
    Array([0.], dtype=float32)

  References:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015.

  Convention: forward KL(teacher || student), multiplied by T^2 so that the gradient with
  respect to the student logits, ``T (p_s^T - p_t^T)``, keeps its scale as T changes.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  temp = jnp.asarray(temperature, s.dtype)
  kl = _utils.kl_from_log_probs(_utils.log_softmax(t, temp), _utils.log_softmax(s, temp))
  return _utils.apply_mask(temp**2 * kl, mask)


def soft_cross_entropy(student_logits: jax.typing.ArrayLike,
                       teacher_logits: jax.typing.ArrayLike,
                       *,
                       temperature: jax.typing.ArrayLike = 1.0,
                       mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Cross-entropy of the student against the teacher's soft targets.

  .. math::
    \ell = -T^2 \sum_c p_t^T[c] \log p_s^T[c]

  It differs from :func:`kd` by ``T^2 H(p_t^T)``, a constant for the student, so the two have
  the same student gradient; this one is not 0 when the student equals the teacher.

  Args:
    student_logits: student logits, shape ``[..., num_classes]``.
    teacher_logits: teacher logits, same shape.
    temperature: softmax temperature ``T > 0``.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.array([[0.0, 0.0]])
    >>> losses.soft_cross_entropy(z, z)  # log 2
    Array([0.6931472], dtype=float32)

  References:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015.

  Convention: teacher probabilities are the targets; scaled by T^2 like :func:`kd`.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  temp = jnp.asarray(temperature, s.dtype)
  log_ps = _utils.log_softmax(s, temp)
  p_t = jnp.exp(_utils.log_softmax(t, temp))
  # Zero teacher probability contributes 0 even where the student's log-probability is -inf.
  terms = jnp.where(p_t > 0, log_ps, jnp.zeros((), s.dtype))
  return _utils.apply_mask(-(temp**2) * jnp.sum(p_t * terms, axis=-1), mask)


def reverse_kd(student_logits: jax.typing.ArrayLike,
               teacher_logits: jax.typing.ArrayLike,
               *,
               temperature: jax.typing.ArrayLike = 1.0,
               mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Reverse KL distillation loss: mode-seeking, student to teacher.

  .. math::
    \ell = T^2 \, \mathrm{KL}(p_s^T \,\|\, p_t^T)

  Args:
    student_logits: student logits, shape ``[..., num_classes]``.
    teacher_logits: teacher logits, same shape.
    temperature: softmax temperature ``T > 0``.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.reverse_kd(jnp.zeros((2, 3)), jnp.zeros((2, 3))).shape
    (2,)

  References:
    Y. Gu, L. Dong, F. Wei, M. Huang, "MiniLLM: Knowledge Distillation of Large Language
    Models", 2024.

  Convention: reverse KL(student || teacher), scaled by T^2 like :func:`kd`.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  temp = jnp.asarray(temperature, s.dtype)
  kl = _utils.kl_from_log_probs(_utils.log_softmax(s, temp), _utils.log_softmax(t, temp))
  return _utils.apply_mask(temp**2 * kl, mask)


def jensen_shannon(student_logits: jax.typing.ArrayLike,
                   teacher_logits: jax.typing.ArrayLike,
                   *,
                   temperature: jax.typing.ArrayLike = 1.0,
                   mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Jensen-Shannon divergence between the student's and teacher's distributions.

  .. math::
    \ell = \frac{T^2}{2}\left(\mathrm{KL}(p_t^T \,\|\, m) + \mathrm{KL}(p_s^T \,\|\, m)\right),
    \qquad m = \tfrac12 (p_s^T + p_t^T)

  Symmetric and bounded by ``T^2 log 2``.

  Args:
    student_logits: student logits, shape ``[..., num_classes]``.
    teacher_logits: teacher logits, same shape.
    temperature: softmax temperature ``T > 0``.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.array([[30.0, 0.0]]); t = jnp.array([[0.0, 30.0]])
    >>> bool(jnp.allclose(losses.jensen_shannon(s, t), jnp.log(2.0)))
    True

  References:
    J. Lin, "Divergence Measures Based on the Shannon Entropy", 1991.

  Convention: natural logarithm, scaled by T^2 like :func:`kd`.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  temp = jnp.asarray(temperature, s.dtype)
  log_ps, log_pt = _utils.log_softmax(s, temp), _utils.log_softmax(t, temp)
  return _utils.apply_mask(temp**2 * _utils.js_from_log_probs(log_ps, log_pt), mask)


def logit_mse(student_logits: jax.typing.ArrayLike,
              teacher_logits: jax.typing.ArrayLike,
              *,
              mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Mean squared error between logits.

  .. math::
    \ell = \frac{1}{C} \sum_c (z_s[c] - z_t[c])^2

  Args:
    student_logits: student logits, shape ``[..., num_classes]``.
    teacher_logits: teacher logits, same shape.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.logit_mse(jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 0.0]]))
    Array([5.], dtype=float32)

  References:
    J. Ba, R. Caruana, "Do Deep Nets Really Need to be Deep?", 2014.

  Convention: mean (not sum) over classes; no temperature.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask)
  return _utils.apply_mask(jnp.mean(jnp.square(s - t), axis=-1), mask)


def dkd(student_logits: jax.typing.ArrayLike,
        teacher_logits: jax.typing.ArrayLike,
        labels: jax.typing.ArrayLike,
        *,
        alpha: jax.typing.ArrayLike = 1.0,
        beta: jax.typing.ArrayLike = 8.0,
        temperature: jax.typing.ArrayLike = 4.0,
        mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Decoupled knowledge distillation: target-class and non-target-class KD, weighted apart.

  .. math::
    \ell = T^2 \left(\alpha\, \mathrm{KL}(b_t \,\|\, b_s)
         + \beta\, \mathrm{KL}(\hat p_t \,\|\, \hat p_s)\right)

  where ``b = [p^T[y], 1 - p^T[y]]`` is the binary target / non-target distribution (TCKD)
  and ``\hat p = softmax(z_{\setminus y} / T)`` is the distribution over the ``C - 1``
  non-target classes only (NCKD). The target class is removed exactly (its logit is not
  part of ``\hat p``), and ``log(1 - p[y])`` is computed as
  ``logsumexp(z_{\setminus y}/T) - logsumexp(z/T)``, so the loss stays finite for very
  confident logits (e.g. magnitude 1e3 in bfloat16).

  Args:
    student_logits: student logits, shape ``[..., num_classes]`` with ``num_classes >= 2``.
    teacher_logits: teacher logits, same shape.
    labels: integer ground-truth classes, shape ``student_logits.shape[:-1]``, values in
      ``[0, num_classes)`` (not checked inside jit; any integer at masked positions).
    alpha: weight of the target-class term (TCKD).
    beta: weight of the non-target-class term (NCKD).
    temperature: softmax temperature ``T > 0``.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.array([[2.0, 0.5, -1.0]]); t = jnp.array([[3.0, -1.0, 0.0]])
    >>> losses.dkd(s, t, jnp.array([0])).shape
    (1,)

  References:
    B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation", 2022.

  Convention: both terms are forward KL(teacher || student) and both are scaled by T^2; the
  usual warm-up of the whole term is a weight schedule in ``kdjax.objectives``, not here.
  """
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  labels = _mask_labels(_utils.check_labels(jnp.asarray(labels), s), mask)
  num_classes = s.shape[-1]
  if num_classes < 2:
    raise ValueError(f"dkd needs at least 2 classes (a target and a non-target), got "
                     f"{num_classes}")
  temp = jnp.asarray(temperature, s.dtype)

  # Indices of the C-1 non-target classes of each example: 0..C-2, shifted past the label.
  j = jnp.broadcast_to(jnp.arange(num_classes - 1, dtype=jnp.int32),
                       labels.shape + (num_classes - 1,))
  other = j + (j >= labels[..., None]).astype(jnp.int32)

  def split(z):
    z = z / temp
    lse_all = jax.nn.logsumexp(z, axis=-1)
    z_target = jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
    z_other = jnp.take_along_axis(z, other, axis=-1)
    log_binary = jnp.stack([z_target - lse_all,
                            jax.nn.logsumexp(z_other, axis=-1) - lse_all], axis=-1)
    return log_binary, jax.nn.log_softmax(z_other, axis=-1)

  s_binary, s_other = split(s)
  t_binary, t_other = split(t)
  tckd = _utils.kl_from_log_probs(t_binary, s_binary)
  nckd = _utils.kl_from_log_probs(t_other, s_other)
  alpha = jnp.asarray(alpha, s.dtype)
  beta = jnp.asarray(beta, s.dtype)
  return _utils.apply_mask(temp**2 * (alpha * tckd + beta * nckd), mask)


def _mask_labels(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Class 0 at masked positions, so padding labels (e.g. -1) never index out of range."""
  return labels if mask is None else jnp.where(mask, labels, jnp.zeros((), labels.dtype))


def dist(student_logits: jax.typing.ArrayLike,
         teacher_logits: jax.typing.ArrayLike,
         *,
         beta: jax.typing.ArrayLike = 1.0,
         gamma: jax.typing.ArrayLike = 1.0,
         temperature: jax.typing.ArrayLike = 1.0) -> jax.Array:
  r"""DIST: match inter-class and intra-class correlations of the predictions.

  .. math::
    y = \mathrm{softmax}(z / T) \in \mathbb{R}^{B \times C},\quad
    \ell = T^2 \Big(\beta \big(1 - \tfrac1B \textstyle\sum_i \rho(y_s[i,:], y_t[i,:])\big)
         + \gamma \big(1 - \tfrac1C \textstyle\sum_c \rho(y_s[:,c], y_t[:,c])\big)\Big)

  with the Pearson correlation ``rho(a, b) = <a - mean a, b - mean b> /
  (||a - mean a|| ||b - mean b|| + 1e-8)``.

  Args:
    student_logits: student logits, shape ``[B, C]`` (leading axes beyond one are flattened
      into the batch, e.g. ``[B, L, V] -> [B*L, V]``).
    teacher_logits: teacher logits, same shape.
    beta: weight of the inter-class (per-example, across classes) relation.
    gamma: weight of the intra-class (per-class, across the batch) relation.
    temperature: softmax temperature ``T > 0``.

  Returns:
    A scalar (the loss is defined over the whole batch), float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    >>> bool(jnp.abs(losses.dist(z, z)) < 1e-6)
    True

  References:
    T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A Stronger
    Teacher", 2022.

  Convention: batch-level (returns a scalar); scaled by T^2. The intra-class term needs a batch
  of at least 2 to be informative (with B = 1 it is the constant ``gamma T^2``). It takes no
  mask: select the real examples before calling it.
  """
  s, t = _utils.as_float(student_logits, teacher_logits)
  _utils.check_logits_pair(s, t)
  _utils.check_temperature(temperature)
  temp = jnp.asarray(temperature, s.dtype)
  num_classes = s.shape[-1]
  y_s = jnp.exp(_utils.log_softmax(s, temp)).reshape(-1, num_classes)
  y_t = jnp.exp(_utils.log_softmax(t, temp)).reshape(-1, num_classes)
  inter = 1.0 - jnp.mean(_pearson(y_s, y_t, axis=1))
  intra = 1.0 - jnp.mean(_pearson(y_s, y_t, axis=0))
  return temp**2 * (jnp.asarray(beta, s.dtype) * inter + jnp.asarray(gamma, s.dtype) * intra)


def _pearson(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
  a = a - jnp.mean(a, axis=axis, keepdims=True)
  b = b - jnp.mean(b, axis=axis, keepdims=True)
  denom = _utils.safe_norm(a, axis=axis) * _utils.safe_norm(b, axis=axis) + 1e-8
  return jnp.sum(a * b, axis=axis) / denom


def standardize_logits(logits: jax.typing.ArrayLike,
                       *,
                       eps: jax.typing.ArrayLike = 1e-7,
                       ddof: int = 1) -> jax.Array:
  r"""Z-scores logits along the class axis, to use before any response loss.

  .. math::
    \tilde z = \frac{z - \bar z}{\sigma(z) + \epsilon},\qquad
    \sigma(z) = \sqrt{\tfrac{1}{C - \mathrm{ddof}} \textstyle\sum_c (z_c - \bar z)^2}

  Args:
    logits: logits, shape ``[..., num_classes]`` (at least 2 classes when ``ddof=1``).
    eps: added to the standard deviation (not to the variance); keeps constant logits finite
      (they map to 0).
    ddof: ``1`` (the default) for the sample standard deviation, as the official code's
      ``logit.std(dim=-1)``; ``0`` for the population one (divides by ``C``).

  Returns:
    Standardized logits, same shape as ``logits``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.standardize_logits(jnp.array([[1.0, 3.0]]), ddof=0)
    Array([[-0.9999999,  0.9999999]], dtype=float32)

  References:
    S. Sun, W. Ren, J. Li, R. Wang, X. Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024. Checked against the authors' code
    (sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``, ``normalize``):
    ``(z - mean) / (1e-7 + std)`` with PyTorch's default (sample) ``std``.

  Convention: sample standard deviation (``C - 1``) by default, with ``eps`` added to it, as
  the official code; the two differ by a factor ``sqrt(C / (C - 1))`` (0.5% at 100 classes).
  Standardize both the student's and the teacher's logits, then call e.g. :func:`kd`.
  """
  (z,) = _utils.as_float(logits)
  if z.ndim < 1:
    raise ValueError(f"logits need a class axis, got shape {z.shape}")
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 1 (sample std, the paper's code) or 0 (population std), "
                     f"got {ddof}")
  if z.shape[-1] - ddof < 1:
    raise ValueError(f"the sample standard deviation needs at least 2 classes, got "
                     f"{z.shape[-1]}; pass ddof=0 for a single class")
  z = z - jnp.mean(z, axis=-1, keepdims=True)
  std = _utils.safe_norm(z, axis=-1, keepdims=True) / jnp.sqrt(
      jnp.asarray(z.shape[-1] - ddof, z.dtype))
  return z / (std + jnp.asarray(eps, z.dtype))


def cross_entropy(logits: jax.typing.ArrayLike,
                  labels: jax.typing.ArrayLike,
                  *,
                  label_smoothing: jax.typing.ArrayLike = 0.0,
                  mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Hard-label softmax cross-entropy with integer labels, optionally label-smoothed.

  .. math::
    \ell = -\sum_c q_c \log \mathrm{softmax}(z)_c,\qquad
    q = (1 - \epsilon)\,\mathrm{onehot}(y) + \epsilon / C

  Args:
    logits: logits, shape ``[..., num_classes]``.
    labels: integer classes, shape ``logits.shape[:-1]`` (any integer at masked positions, e.g.
      ``-1`` padding targets).
    label_smoothing: ``epsilon`` in ``[0, 1]``.
    mask: optional ``logits.shape[:-1]`` (``[B]`` or ``[B, L]``) bool or 0/1; masked
      positions return exactly 0, even where their logits are not finite.

  Returns:
    Per-example loss, shape ``logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))  # log 4
    Array([1.3862944], dtype=float32)

  References:
    C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the Inception
    Architecture for Computer Vision", 2016 (label smoothing).

  Convention: the supervised term of a distillation objective; no temperature.
  """
  (z,) = _utils.as_float(logits, what="logits")
  if z.ndim < 1:
    raise ValueError(f"logits need a class axis, got shape {z.shape}")
  _utils.check_not_empty(z.shape[:-1])
  labels = _utils.check_labels(jnp.asarray(labels), z)
  _utils.check_fraction(label_smoothing, "label_smoothing")
  mask = _utils.check_mask(mask, z.shape[:-1], "the per-example loss (logits.shape[:-1])")
  (z,) = _utils.mask_inputs(mask, z)
  labels = _mask_labels(labels, mask)
  log_p = jax.nn.log_softmax(z, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    return _utils.apply_mask(nll, mask)  # No smoothing term: it is inf for a -inf logit.
  smooth = -jnp.mean(log_p, axis=-1)
  eps = jnp.asarray(label_smoothing, z.dtype)
  return _utils.apply_mask((1.0 - eps) * nll + eps * smooth, mask)

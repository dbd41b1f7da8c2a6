"""Token-level losses for language models: skewed divergences, sparse top-k teachers and
Transformer hidden-state / attention matching.

Logits are ``[batch, length, vocab]`` (any ``[..., vocab]`` works); every loss returns one value
per token, shape ``logits.shape[:-1]``. Where a ``mask`` (``[batch, length]``, or ``[batch]`` for
whole sequences; bool or 0/1) is given, masked positions return exactly 0 (even if their inputs
are not finite); reduce with :func:`kdjax.losses.masked_mean`. The plain per-token divergences
are the response losses themselves: :func:`kdjax.losses.kd`, :func:`~kdjax.losses.reverse_kd`
and :func:`~kdjax.losses.jensen_shannon` take ``[B, L, V]`` logits and a ``mask`` too.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


# The modes of sparse_kd (and of every cache of teacher top-k values built for it).
SPARSE_MODES = ("renormalize", "remainder")


def _skew_divergence(student_logits, teacher_logits, alpha, temperature, mask, *, reverse):
  """``T^2 KL(p || alpha p + (1 - alpha) q)`` per position: ``p`` the teacher (student if
  ``reverse``), ``q`` the other side; masked positions are zeroed first and return 0."""
  _utils.check_fraction(alpha, "alpha")
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  temp = jnp.asarray(temperature, s.dtype)
  log_p, log_q = _utils.log_softmax(t, temp), _utils.log_softmax(s, temp)
  if reverse:
    log_p, log_q = log_q, log_p
  alpha = jnp.asarray(alpha, s.dtype)
  log_mix = _utils.logaddexp(jnp.log(alpha) + log_p, jnp.log1p(-alpha) + log_q)
  return _utils.apply_mask(temp**2 * _utils.kl_from_log_probs(log_p, log_mix), mask)


def skew_kl(student_logits: jax.typing.ArrayLike,
            teacher_logits: jax.typing.ArrayLike,
            *,
            alpha: jax.typing.ArrayLike = 0.1,
            temperature: jax.typing.ArrayLike = 1.0,
            mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-token skew KL: forward KL from the teacher to a teacher-student mixture.

  .. math::
    \ell_{b,l} = T^2\, \mathrm{KL}\big(p_t^T \,\|\, \alpha p_t^T + (1 - \alpha) p_s^T\big)

  Bounded by ``-T^2 log(alpha)``, so its gradients stay tame when the student puts almost no
  mass where the teacher does; ``alpha = 0`` is :func:`kdjax.losses.kd`.

  Args:
    student_logits: student logits, shape ``[batch, length, vocab]`` (or ``[batch, classes]``).
    teacher_logits: teacher logits, same shape.
    alpha: how much of the teacher is mixed into the student side, in ``[0, 1]``.
    temperature: softmax temperature ``T > 0``.
    mask: ``[batch, length]`` (or ``[batch]``) bool or 0/1; masked tokens return 0.

  Returns:
    Per-token loss, shape ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.zeros((1, 2, 4)); t = jnp.arange(8.0).reshape(1, 2, 4)
    >>> bool(jnp.all(losses.skew_kl(s, t) <= -jnp.log(0.1)))
    True

  References:
    J. Ko, S. Kim, T. Chen, S.-Y. Yun, "DistiLLM: Towards Streamlined Distillation for Large
    Language Models", 2024.

  Convention: the teacher is mixed into the student side of a forward KL; scaled by T^2.
  """
  return _skew_divergence(student_logits, teacher_logits, alpha, temperature, mask,
                          reverse=False)


def skew_reverse_kl(student_logits: jax.typing.ArrayLike,
                    teacher_logits: jax.typing.ArrayLike,
                    *,
                    alpha: jax.typing.ArrayLike = 0.1,
                    temperature: jax.typing.ArrayLike = 1.0,
                    mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-token skew reverse KL: reverse KL from the student to a student-teacher mixture.

  .. math::
    \ell_{b,l} = T^2\, \mathrm{KL}\big(p_s^T \,\|\, \alpha p_s^T + (1 - \alpha) p_t^T\big)

  ``alpha = 0`` is :func:`kdjax.losses.reverse_kd`; like :func:`skew_kl` it is bounded by
  ``-T^2 log(alpha)``.

  Args:
    student_logits: the student's ``[batch, length, vocab]`` logits (any ``[..., vocab]``).
    teacher_logits: the teacher's, shaped like the student's.
    alpha: share of the student in the mixture it is compared with, ``0 <= alpha <= 1``.
    temperature: ``T > 0``, dividing both sides' logits.
    mask: bool or 0/1 flags of the real tokens, ``logits.shape[:-1]`` or ``[batch]``; padded
      tokens give exactly 0.

  Returns:
    One value per token, ``logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.skew_reverse_kl(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3, 5))).shape
    (2, 3)

  References:
    The skew reverse KL of DistiLLM (Ko, Kim, Chen and Yun, ICML 2024), the mirror image of
    :func:`skew_kl`.

  Convention: the student is mixed into the teacher side of a reverse KL; scaled by T^2.
  """
  return _skew_divergence(student_logits, teacher_logits, alpha, temperature, mask, reverse=True)


def topk_teacher_logits(teacher_logits: jax.typing.ArrayLike,
                        k: int,
                        *,
                        log_probs: bool = False,
                        temperature: jax.typing.ArrayLike = 1.0) -> tuple[jax.Array, jax.Array]:
  r"""The teacher's ``k`` largest logits (or log-probabilities) per token, for :func:`sparse_kd`.

  Args:
    teacher_logits: teacher logits, shape ``[..., vocab]``.
    k: how many entries to keep, ``1 <= k <= vocab``.
    log_probs: return ``log softmax(z / T)`` of the full vocabulary at the top-k entries
      (what ``sparse_kd(..., mode='remainder')`` needs) instead of the raw logits.
    temperature: the ``T`` of ``log_probs`` (ignored for raw logits); use the temperature you
      will pass to :func:`sparse_kd`.

  Returns:
    ``(values, indices)``: float32 values of shape ``[..., k]`` in decreasing order and their
    int32 vocabulary indices, same shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> values, indices = losses.topk_teacher_logits(jnp.array([[0.0, 5.0, 1.0, 3.0]]), 2)
    >>> indices
    Array([[1, 3]], dtype=int32)
  """
  (t,) = _utils.as_float(teacher_logits, what="teacher logits")
  if t.ndim < 1:
    raise ValueError(f"teacher logits need a vocabulary axis, got shape {t.shape}")
  if not isinstance(k, numbers.Integral) or not 1 <= k <= t.shape[-1]:
    raise ValueError(f"k must be an integer in [1, vocab={t.shape[-1]}], got {k!r}")
  if log_probs:
    _utils.check_temperature(temperature)
    t = _utils.log_softmax(t, jnp.asarray(temperature, t.dtype))
  values, indices = jax.lax.top_k(t, int(k))
  return values, indices.astype(jnp.int32)


def _log1mexp(x: jax.Array) -> jax.Array:
  """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends; ``-inf`` at ``x >= 0``."""
  neg = x < 0
  x = jnp.where(neg, x, -jnp.ones((), x.dtype))  # keeps log(0) out of value and gradient
  value = jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))
  return jnp.where(neg, value, jnp.full((), -jnp.inf, x.dtype))


def sparse_kd(student_logits: jax.typing.ArrayLike,
              topk_values: jax.typing.ArrayLike,
              topk_indices: jax.typing.ArrayLike,
              *,
              temperature: jax.typing.ArrayLike = 1.0,
              mode: str = "renormalize",
              mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-token forward KL against a teacher known only through its top-k entries.

  With the student's full-vocabulary ``log p_s^T = log softmax(z_s / T)`` gathered at the
  teacher's indices ``I`` (``|I| = k``):

  * ``mode='renormalize'``: ``topk_values`` are teacher **logits** (``topk_teacher_logits(t,
    k)``). The teacher is ``q = softmax(v / T)`` over ``I`` and 0 elsewhere:

    .. math::
      \ell = T^2 \sum_{i \in I} q_i (\log q_i - \log p_s^T[i])

  * ``mode='remainder'``: ``topk_values`` are teacher **log-probabilities of its full
    distribution at the same temperature** (``topk_teacher_logits(t, k, log_probs=True,
    temperature=T)``); they are not rescaled here. The mass outside the top-k forms a
    (k+1)-th bucket, matched against the student's mass outside ``I``:

    .. math::
      \ell = T^2 \Big(\sum_{i \in I} q_i (\log q_i - \log p_s^T[i])
           + r_t (\log r_t - \log r_s)\Big),\quad
      r_t = 1 - \sum_{i \in I} q_i,\ r_s = 1 - \sum_{i \in I} p_s^T[i]

  With ``k = vocab`` both modes equal :func:`kdjax.losses.kd`.

  Args:
    student_logits: student logits, shape ``[batch, length, vocab]``.
    topk_values: teacher top-k values, shape ``[batch, length, k]`` (see ``mode``).
    topk_indices: their distinct vocabulary indices, integer, shape ``[batch, length, k]``.
    temperature: softmax temperature ``T > 0``.
    mode: ``'renormalize'`` or ``'remainder'``.
    mask: flags of the real tokens (``[batch, length]``, or ``[batch]`` per sequence), bool or
      0/1; padding returns exactly 0.

  Returns:
    The per-token divergence ``[batch, length]`` (float32).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.zeros((1, 2, 6)); t = jnp.arange(12.0).reshape(1, 2, 6)
    >>> v, i = losses.topk_teacher_logits(t, 6)
    >>> bool(jnp.allclose(losses.sparse_kd(s, v, i), losses.kd(s, t)))
    True

  References:
    Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", 2016 (top-k teacher
    distributions for word-level KD).

  Convention: forward KL(teacher || student), scaled by T^2 like :func:`kdjax.losses.kd`.
  """
  if mode not in SPARSE_MODES:
    raise ValueError(f"mode must be one of {SPARSE_MODES}, got {mode!r}")
  s, v = _utils.as_float(student_logits, topk_values, what="logits and top-k values")
  idx = _utils.check_sparse_target(s, v, topk_indices, names=("topk_values", "topk_indices"),
                                   source="topk_teacher_logits")
  vocab, k = s.shape[-1], v.shape[-1]
  if not 1 <= k <= vocab:
    raise ValueError(f"the teacher gives k={k} entries but the student's vocabulary has {vocab}; "
                     "give both models the same vocabulary")
  s, v, mask = _utils.checked_positions(s, v, temperature=temperature, mask=mask)
  temp = jnp.asarray(temperature, s.dtype)

  z_s = s / temp
  lse_s = jax.nn.logsumexp(z_s, axis=-1, keepdims=True)
  log_ps_k = jnp.take_along_axis(z_s, idx, axis=-1) - lse_s

  if mode == "renormalize":
    log_q = jax.nn.log_softmax(v / temp, axis=-1)
    loss = _utils.kl_from_log_probs(log_q, log_ps_k)
  else:
    loss = _utils.kl_from_log_probs(v, log_ps_k)
    if k < vocab:  # With k = vocab there is no remainder, by construction.
      log_r_t = _log1mexp(jax.nn.logsumexp(v, axis=-1))
      outside = jnp.put_along_axis(jnp.ones(s.shape, bool), idx, False, axis=-1,
                                   inplace=False)
      # Top-k indices are distinct, so k < vocab leaves at least one class outside.
      lse_out = jax.nn.logsumexp(jnp.where(outside, z_s, -jnp.inf), axis=-1)
      log_r_s = lse_out - lse_s[..., 0]
      loss = loss + _utils.kl_terms(log_r_t, log_r_s)
  return _utils.apply_mask(temp**2 * loss, mask)


def hidden_mse(student_hidden: jax.typing.ArrayLike,
               teacher_hidden: jax.typing.ArrayLike,
               mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-token mean squared error between hidden states.

  .. math::
    \ell_{b,l} = \frac1D \sum_d (h_s[b,l,d] - h_t[b,l,d])^2

  Args:
    student_hidden: the student's hidden states ``[batch, length, D]``, already projected onto
      the teacher's width by an adapter when the widths differ.
    teacher_hidden: the teacher's, shaped like the student's.
    mask: bool or 0/1 per token (``[batch, length]``) or per sequence (``[batch]``); padded
      tokens give exactly 0.

  Returns:
    One value per token, ``[batch, length]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.hidden_mse(jnp.ones((1, 2, 4)), jnp.zeros((1, 2, 4)))
    Array([[1., 1.]], dtype=float32)

  References:
    X. Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", 2020.

  Convention: mean (not sum) over the hidden features.
  """
  s, t = _utils.as_float(student_hidden, teacher_hidden, what="hidden states")
  if s.ndim < 1 or s.shape != t.shape:
    raise ValueError(f"hidden states must share one [batch, length, D] shape, got student "
                     f"{s.shape} and teacher {t.shape}; project the student onto the teacher's "
                     "width with an adapter (TinyBERT's W_h), e.g. "
                     "objectives.feature_mse(..., adapter='linear')")
  _utils.check_not_empty(s.shape[:-1], "hidden states")
  mask = _utils.check_mask(mask, s.shape[:-1], "the per-token loss (hidden.shape[:-1])")
  s, t = _utils.mask_inputs(mask, s, t)
  return _utils.apply_mask(jnp.mean(jnp.square(s - t), axis=-1), mask)


def _attention_pair(student, teacher, mask, what: str):
  """Checked float ``[B, H, Lq, Lk]`` maps with masked queries zeroed before any math (see
  ``mask_inputs``), and the ``[B, Lq]`` bool mask."""
  s, t = _utils.as_float(student, teacher, what=what)
  if s.ndim != 4:
    raise ValueError(f"{what} must have shape [batch, heads, query_length, key_length], got "
                     f"{s.shape}")
  if s.shape != t.shape:
    raise ValueError(f"student {what} have shape {s.shape} but teacher {what} have {t.shape}; "
                     "match layers with the same number of heads and the same sequences")
  _utils.check_not_empty((s.shape[0], s.shape[2]), what)
  mask = _utils.check_mask(mask, (s.shape[0], s.shape[2]),
                           "the per-query loss ([batch, query_length])")
  if mask is None:
    return s, t, mask
  m = mask[:, None, :, None]
  zero = jnp.zeros((), s.dtype)
  return jnp.where(m, s, zero), jnp.where(m, t, zero), mask


def attention_kl(student_attn_probs: jax.typing.ArrayLike,
                 teacher_attn_probs: jax.typing.ArrayLike,
                 mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-query KL between teacher and student attention distributions, averaged over heads.

  .. math::
    \ell_{b,q} = \frac1H \sum_h \sum_k a_t[b,h,q,k]\,
    \big(\log a_t[b,h,q,k] - \log \max(a_s[b,h,q,k], \epsilon)\big)

  with ``epsilon`` the smallest normal float32, so a student probability of exactly 0 where
  the teacher's is not gives a large finite value; teacher zeros contribute 0.

  Args:
    student_attn_probs: student attention probabilities (rows sum to 1), shape
      ``[batch, heads, query_length, key_length]``.
    teacher_attn_probs: teacher attention probabilities, same shape.
    mask: ``[batch, query_length]`` bool or 0/1; masked queries return 0.

  Returns:
    Per-query loss, shape ``[batch, query_length]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> a = jnp.full((1, 2, 3, 4), 0.25)
    >>> losses.attention_kl(a, a)
    Array([[0., 0., 0.]], dtype=float32)

  References:
    W. Wang, F. Wei, L. Dong, H. Bao, N. Yang, M. Zhou, "MiniLM: Deep Self-Attention
    Distillation for Task-Agnostic Compression of Pre-Trained Transformers", 2020.

  Convention: forward KL(teacher || student) over the keys, mean over the heads.
  """
  s, t, mask = _attention_pair(student_attn_probs, teacher_attn_probs, mask,
                               "attention probabilities")
  tiny = jnp.finfo(s.dtype).tiny
  positive = t > 0
  log_t = jnp.log(jnp.where(positive, t, jnp.ones((), t.dtype)))
  terms = jnp.where(positive, t * (log_t - jnp.log(jnp.maximum(s, tiny))),
                    jnp.zeros((), t.dtype))
  return _utils.apply_mask(jnp.mean(jnp.sum(terms, axis=-1), axis=1), mask)


def attention_mse(student_attn: jax.typing.ArrayLike,
                  teacher_attn: jax.typing.ArrayLike,
                  mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Per-query mean squared error between attention matrices (scores or probabilities).

  .. math::
    \ell_{b,q} = \frac{1}{H K} \sum_{h,k} (A_s[b,h,q,k] - A_t[b,h,q,k])^2

  Args:
    student_attn: student attention scores, shape ``[batch, heads, query_length,
      key_length]``. Masked keys must hold finite values (e.g. the scores before the additive
      mask, or 0), since ``-inf - -inf`` is undefined.
    teacher_attn: teacher attention scores, same shape.
    mask: ``[batch, query_length]`` (or ``[batch]``) bool or 0/1; padded queries return 0.

  Returns:
    Per-query loss ``[batch, query_length]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.attention_mse(jnp.ones((1, 2, 3, 4)), jnp.zeros((1, 2, 3, 4)))
    Array([[1., 1., 1.]], dtype=float32)

  References:
    X. Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", 2020.

  Convention: TinyBERT matches the unnormalised attention scores; mean over heads and keys.
  """
  s, t, mask = _attention_pair(student_attn, teacher_attn, mask, "attention scores")
  return _utils.apply_mask(jnp.mean(jnp.square(s - t), axis=(1, 3)), mask)


def check_beta(beta) -> float:
  """``beta`` of the generalized JSD: a Python number in ``[0, 1]`` (it selects the formula)."""
  if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be a number in [0, 1] (0: forward KL(teacher || student), "
                     f"1: reverse KL(student || teacher)), got {beta!r}")
  return float(beta)


def generalized_jsd_per_token(student_logits: jax.Array, teacher_logits: jax.Array, beta: float,
                              temperature) -> jax.Array:
  """The generalized JSD of each position's distributions (no mask, no checks), float32 in."""
  temp = jnp.asarray(temperature, student_logits.dtype)
  log_s = _utils.log_softmax(student_logits, temp)
  log_t = _utils.log_softmax(teacher_logits, temp)
  if beta == 0.0:
    return _utils.kl_from_log_probs(log_t, log_s)
  if beta == 1.0:
    return _utils.kl_from_log_probs(log_s, log_t)
  b = jnp.asarray(beta, log_s.dtype)
  log_m = _utils.logaddexp(log_s + jnp.log1p(-b), log_t + jnp.log(b))
  return b * _utils.kl_from_log_probs(log_t, log_m) + (1 - b) * _utils.kl_from_log_probs(log_s,
                                                                                        log_m)


def generalized_jsd(student_logits: jax.typing.ArrayLike,
                    teacher_logits: jax.typing.ArrayLike,
                    *,
                    beta: float = 0.5,
                    temperature: jax.typing.ArrayLike = 1.0,
                    mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Generalized Jensen-Shannon divergence between teacher and student, as a masked token mean.

  With :math:`p_s = \mathrm{softmax}(z_s / T)`, :math:`p_t = \mathrm{softmax}(z_t / T)` and
  :math:`m = \beta p_t + (1 - \beta) p_s`:

  .. math::
    \mathrm{JSD}_\beta = \begin{cases}
      \mathrm{KL}(p_t \,\|\, p_s) & \beta = 0 \\
      \beta\, \mathrm{KL}(p_t \,\|\, m) + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m) & 0 < \beta < 1 \\
      \mathrm{KL}(p_s \,\|\, p_t) & \beta = 1
    \end{cases}

  averaged over the tokens ``mask`` keeps (:func:`kdjax.losses.masked_mean`).

  Args:
    student_logits: ``[batch, length, vocab]`` (any ``[..., vocab]``).
    teacher_logits: same shape.
    beta: a Python number in ``[0, 1]``: 0 is forward KL(teacher || student), 1 reverse
      KL(student || teacher), 0.5 the symmetric JSD.
    temperature: ``T > 0``, dividing both logits.
    mask: ``[batch, length]`` (or ``[batch]``) bool or 0/1; masked tokens are left out.

  Returns:
    A scalar, float32: the masked token mean (0 when the mask keeps nothing).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.arange(8.0).reshape(1, 2, 4)
    >>> float(losses.generalized_jsd(z, z))
    0.0

  References:
    R. Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes" (GKD), 2024; the convention of TRL's ``GKDTrainer.generalized_jsd_loss``.

  Convention: no ``T^2`` factor (a term that wants Hinton's scaling multiplies by it); the
  mixture weights the teacher by ``beta``.
  """
  beta = check_beta(beta)
  s, t, mask = _utils.logits_pair(student_logits, teacher_logits, mask, temperature)
  per_token = generalized_jsd_per_token(s, t, beta, temperature)
  return _utils.masked_mean(per_token, mask)

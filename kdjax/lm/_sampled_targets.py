"""Sampled teacher targets (Gemma 3's offline distillation): ``k`` vocabulary entries per token
drawn from the teacher's distribution, with weights, read by
:func:`kdjax.losses.sampled_cross_entropy`.

Unlike the top-k of :class:`~kdjax.lm.TeacherCache`, a sample reaches into the teacher's tail, so
over many steps the student sees the whole distribution. What a teacher cache of sampled
targets stores, per token of its (possibly packed) token rows: ``indices`` int32 ``[N, L, k]``
and ``weights`` float32 ``[N, L, k]`` aligned row for row with the tokens; the row's key is
``jax.random.fold_in(key, row)`` so a build resumed from any row gives the same samples; the
fingerprint holds the teacher's parameters hash, the tokenizer's fingerprint, the token rows'
hash (packing included), ``k``, ``temperature``, ``weighting`` and the seed.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax import objectives
from kdjax.objectives import SAMPLED_INDICES_KEY, SAMPLED_WEIGHTS_KEY, Term

SAMPLED_WEIGHTINGS = ("renormalized", "unbiased")


def sample_teacher_targets(key: jax.Array, teacher_logits: jax.typing.ArrayLike, k: int, *,
                           temperature: float = 1.0,
                           weighting: str = "renormalized") -> tuple[jax.Array, jax.Array]:
  r"""``k`` distinct vocabulary entries per token, sampled from the teacher, and their weights.

  With ``p = softmax(z_t / T)``, the entries are a sample without replacement in proportion to
  ``p`` (Gumbel-top-k: the ``k`` largest ``log p_v + g_v``, ``g_v`` i.i.d. standard Gumbel; the
  first entry is distributed exactly as ``p``). The weights:

  * ``'renormalized'`` (Gemma 3): the teacher's probabilities on the sample, renormalised,
    ``w_i = p[idx_i] / \sum_j p[idx_j]`` (zero probability off the sample). The target is biased
    towards the teacher's likely entries (its average is not ``p``) but sums to 1.
  * ``'unbiased'``: ``w_i = p[idx_i] / q_i`` with ``q_i = 1 - \exp(-\exp(\log p[idx_i] -
    \kappa))``, the probability that entry ``idx_i`` beats ``\kappa``, the ``(k+1)``-th largest
    perturbed log-probability (priority sampling). Then ``E[\sum_i w_i f(idx_i)] = \sum_v p_v
    f(v)`` for any ``f``: the cross-entropy against the sample is an unbiased estimate of the
    cross-entropy against ``p``. The weights sum to 1 only on average. ``k = V`` gives ``p``.

  Args:
    key: a PRNG key; the samples are a function of it alone.
    teacher_logits: ``[..., V]`` teacher logits (e.g. ``[B, L, V]``).
    k: entries per token, ``1 <= k <= V``.
    temperature: ``T > 0`` of the teacher's distribution.
    weighting: ``'renormalized'`` or ``'unbiased'``.

  Returns:
    ``(indices, weights)``: int32 ``[..., k]`` distinct vocabulary indices (in decreasing order
    of their perturbed log-probability) and float32 ``[..., k]`` weights.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax import lm
    >>> idx, w = lm.sample_teacher_targets(jax.random.key(0), jnp.zeros((2, 3, 10)), 4)
    >>> idx.shape, bool(jnp.allclose(w.sum(-1), 1.0))
    ((2, 3, 4), True)

  References:
    Gemma Team, "Gemma 3 Technical Report", 2025. W. Kool, H. van Hoof, M. Welling,
    "Stochastic Beams and Where to Find Them: The Gumbel-Top-k Trick for Sampling Sequences
    Without Replacement", 2019 (the unbiased weights).
  """
  z = jnp.asarray(teacher_logits)
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"teacher logits must be floating-point, got {z.dtype}")
  if z.ndim < 1:
    raise ValueError(f"teacher logits need a vocabulary axis, got shape {z.shape}")
  vocab = z.shape[-1]
  if not isinstance(k, numbers.Integral) or not 1 <= k <= vocab:
    raise ValueError(f"k must be an integer in [1, vocab={vocab}], got {k!r}; set the number "
                     "of sampled entries per token (e.g. config.teacher_cache.k) to at most the "
                     "vocabulary size")
  if weighting not in SAMPLED_WEIGHTINGS:
    raise ValueError(f"weighting must be one of {SAMPLED_WEIGHTINGS}, got {weighting!r}")
  if not 0.0 < float(temperature) < float("inf"):
    raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
  log_p = jax.nn.log_softmax(z.astype(jnp.float32) / temperature, axis=-1)
  perturbed = log_p + jax.random.gumbel(key, log_p.shape, jnp.float32)
  k_plus = min(int(k) + 1, vocab)
  top, idx = jax.lax.top_k(perturbed, k_plus)
  idx = idx[..., :k]
  log_p_k = jnp.take_along_axis(log_p, idx, axis=-1)
  if weighting == "renormalized":
    weights = jax.nn.softmax(log_p_k, axis=-1)
  elif k == vocab:
    weights = jnp.exp(log_p_k)  # Every entry is in the sample: the weights are p itself.
  else:
    kappa = top[..., k:k + 1]
    # log q = log(1 - exp(-exp(log p - kappa))), with -expm1 for accuracy when it is small.
    log_q = jnp.log(-jnp.expm1(-jnp.exp(log_p_k - kappa)))
    weights = jnp.exp(log_p_k - log_q)
  return idx.astype(jnp.int32), weights


def sampled_kd_term(*, temperature: float = 1.0, indices_key: str = SAMPLED_INDICES_KEY,
                    weights_key: str = SAMPLED_WEIGHTS_KEY, mask_key: str | None = "mask") -> Term:
  """Token KD against sampled teacher targets read from the batch: no teacher forward.

  :func:`kdjax.objectives.sampled_kd` (config kind ``'sampled_kd'``):
  :func:`kdjax.losses.sampled_cross_entropy` of the student's ``[B, L, V]`` logits against
  ``batch[indices_key]`` / ``batch[weights_key]`` (``[B, L, k]``, from
  :func:`sample_teacher_targets` at the same ``temperature``), a token-weighted mean over
  ``batch[mask_key]``. Use with ``DistillState.create(teacher=None, ...)``.
  """
  return objectives.sampled_kd(temperature=temperature, indices_key=indices_key,
                               weights_key=weights_key, mask_key=mask_key)

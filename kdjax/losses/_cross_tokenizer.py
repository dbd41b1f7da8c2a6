"""Losses between a teacher and a student whose tokenizers differ.

The two models' vocabularies (and token counts per text) differ, so nothing is compared entry by
entry. :func:`uld` compares the *shapes* of two next-token distributions (their sorted
probabilities) at positions where both models predict the same text from the same prefix;
:func:`span_kl` compares how likely each model finds the same piece of text (a span of bytes
that both tokenizations cut at its ends); :func:`next_byte_kl`, for a byte-level teacher, its
next-byte distribution with the first byte of the student's next token. ``kdjax.lm`` builds the alignment (which positions and
spans match) from the tokens' byte offsets.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def uld(student_logits: jax.typing.ArrayLike,
        teacher_logits: jax.typing.ArrayLike,
        *,
        temperature: jax.typing.ArrayLike = 1.0,
        mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Universal Logit Distillation: L1 distance between sorted next-token probabilities.

  With ``p_s = softmax(z_s / T)`` over the student's ``V_s`` entries and ``p_t = softmax(z_t /
  T)`` over the teacher's ``V_t``, both sorted in decreasing order and the shorter one padded
  with zeros to ``V = max(V_s, V_t)``:

  .. math::
    \ell = \sum_{i=1}^{V} \big| p_s^{\downarrow}[i] - p_t^{\downarrow}[i] \big|

  It needs no vocabulary mapping, only positions where both distributions are about the same
  next piece of text (e.g. the first token of each aligned span, gathered by
  ``kdjax.lm.gather_positions``). It lies in ``[0, 2]``.

  Args:
    student_logits: student logits at aligned positions, ``[..., V_s]`` (e.g. ``[B, S, V_s]``).
    teacher_logits: teacher logits at the same positions, ``[..., V_t]``; ``V_t`` may differ
      from ``V_s``, the leading axes may not.
    temperature: ``T > 0``, dividing both sides' logits.
    mask: bool or 0/1 flags of the aligned positions, shape ``logits.shape[:-1]`` (or the first
      axis only); masked positions return exactly 0.

  Returns:
    One value per position, ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    >>> t = jnp.log(jnp.array([[0.25, 0.5, 0.25, 1e-9]]))
    >>> round(float(losses.uld(s, t)[0]), 6)  # the same sorted probabilities
    0.0

  References:
    N. Boizard, K. El Haddad, C. Hudelot, P. Colombo, "Towards Cross-Tokenizer Distillation:
    the Universal Logit Distillation Loss for LLMs", 2024.

  Convention: no ``T^2`` factor; the paper adds it to the student's cross-entropy with a weight.
  """
  s, t = _utils.as_float(student_logits, teacher_logits, what="logits")
  if s.ndim < 1 or t.ndim < 1 or s.shape[:-1] != t.shape[:-1]:
    raise ValueError(f"student logits have shape {s.shape} and teacher logits {t.shape}; they "
                     "must share every axis but the vocabulary ([..., V_s] vs [..., V_t]): gather "
                     "both at aligned positions first (kdjax.lm.gather_positions)")
  s, t, mask = _utils.checked_positions(s, t, temperature=temperature, mask=mask,
                                        what="the aligned positions (logits.shape[:-1])")
  temp = jnp.asarray(temperature, s.dtype)
  # Sorting descending = negated ascending sort of the negated values.
  p_s = -jnp.sort(-jax.nn.softmax(s / temp, axis=-1), axis=-1)
  p_t = -jnp.sort(-jax.nn.softmax(t / temp, axis=-1), axis=-1)
  width = max(p_s.shape[-1], p_t.shape[-1])
  pad = lambda p: jnp.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, width - p.shape[-1])])
  return _utils.apply_mask(jnp.sum(jnp.abs(pad(p_s) - pad(p_t)), axis=-1), mask)


def _span_log_probs(logits, targets, spans, num_spans, temperature):
  """``[B, num_spans]`` sums of ``log softmax(z / T)[target]`` over each span's tokens."""
  log_p = jnp.take_along_axis(_utils.log_softmax(logits, temperature),
                              jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  # Tokens of no span (-1) fall outside [0, num_spans) and segment_sum drops them.
  ids = jnp.where(spans < 0, num_spans, spans)
  return jax.vmap(lambda v, i: jax.ops.segment_sum(v, i, num_segments=num_spans))(log_p, ids)


def _check_side(logits, targets, spans, side):
  if logits.ndim != 3:
    raise ValueError(f"{side} logits must be [batch, length, vocab], got shape {logits.shape}")
  for name, x in (("targets", targets), ("spans", spans)):
    if x.shape != logits.shape[:-1] or not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{side} {name} must be integers of shape {logits.shape[:-1]} (the "
                       f"{side} logits' [batch, length]), got {x.dtype}{list(x.shape)}")


def span_kl(student_logits: jax.typing.ArrayLike,
            student_targets: jax.typing.ArrayLike,
            student_spans: jax.typing.ArrayLike,
            teacher_logits: jax.typing.ArrayLike,
            teacher_targets: jax.typing.ArrayLike,
            teacher_spans: jax.typing.ArrayLike,
            *,
            num_spans: int,
            temperature: jax.typing.ArrayLike = 1.0,
            mask: jax.typing.ArrayLike | None = None,
            eps: float = 1e-6) -> jax.Array:
  r"""Per-span binary KL between the teacher's and the student's likelihood of the same text.

  A span ``k`` is a piece of the text that both tokenizations cut at its two ends; it holds one
  or more next-token targets on each side. Each side's likelihood of the span is the product of
  its own next-token probabilities of its target tokens in the span, teacher-forced (chain rule:
  the model's probability of exactly those bytes, given the text before them, spelled with its
  own tokenizer):

  .. math::
    P_t(k) = \prod_{j:\,\mathrm{span}_t(j)=k} p_t^T(y^t_j \mid y^t_{<j}),\qquad
    P_s(k) = \prod_{i:\,\mathrm{span}_s(i)=k} p_s^T(y^s_i \mid y^s_{<i})

  and the loss compares the two Bernoulli distributions "the model continues with this span" /
  "it does not":

  .. math::
    \ell_k = P_t \log\frac{P_t}{P_s} + (1 - P_t)\log\frac{1 - P_t}{1 - P_s}

  Both log-likelihoods are clipped to at most ``log(1 - eps)`` first, so the second term stays
  finite when a float32 softmax rounds a probability to exactly 1.

  Args:
    student_logits: ``[B, L_s, V_s]`` student logits.
    student_targets: int ``[B, L_s]`` the student's next-token targets.
    student_spans: int ``[B, L_s]`` span id of each student target in ``[0, num_spans)``, or -1
      for a target in no span (padding, a special token, text the teacher's window misses).
    teacher_logits: ``[B, L_t, V_t]`` teacher logits (``L_t`` and ``V_t`` may differ).
    teacher_targets: int ``[B, L_t]`` the teacher's targets.
    teacher_spans: int ``[B, L_t]``, like ``student_spans``.
    num_spans: ``S``, the static number of span slots per sequence.
    temperature: ``T > 0``, dividing both sides' logits.
    mask: ``[B, S]`` (or ``[B]``) flags of the spans that exist; masked spans return exactly 0.
    eps: the clipping of the likelihoods away from 1, in ``(0, 1)``.

  Returns:
    One value per span, ``[B, num_spans]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.zeros((1, 2, 4)); y = jnp.zeros((1, 2), jnp.int32); k = jnp.array([[0, 0]])
    >>> round(float(losses.span_kl(z, y, k, z[:, :1], y[:, :1], k[:, :1], num_spans=1)[0, 0]), 4)
    0.1792

  References:
    B. Minixhofer, I. Vulić, E. M. Ponti, "Cross-Tokenizer Distillation via Approximate
    Likelihood Matching", 2025 (binarised divergence of aligned chunk likelihoods).

  Convention: forward KL(teacher || student) of the two Bernoullis; no ``T^2`` factor.
  """
  s, t = _utils.as_float(student_logits, teacher_logits, what="logits")
  ys, ks = jnp.asarray(student_targets), jnp.asarray(student_spans)
  yt, kt = jnp.asarray(teacher_targets), jnp.asarray(teacher_spans)
  _check_side(s, ys, ks, "student")
  _check_side(t, yt, kt, "teacher")
  if s.shape[0] != t.shape[0]:
    raise ValueError(f"student logits have batch size {s.shape[0]} but teacher logits "
                     f"{t.shape[0]}; feed both models the same windows")
  _utils.check_not_empty(s.shape[:-1])
  if not isinstance(num_spans, int) or num_spans < 1:
    raise ValueError(f"num_spans must be a positive int (the span slots per sequence), got "
                     f"{num_spans!r}")
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps must be in (0, 1), got {eps}")
  _utils.check_temperature(temperature)
  mask = _utils.check_mask(mask, (s.shape[0], num_spans), "the spans ([batch, num_spans])")
  temp = jnp.asarray(temperature, s.dtype)
  top = jnp.log1p(-jnp.asarray(eps, s.dtype))
  a = jnp.minimum(_span_log_probs(t, yt, kt, num_spans, temp), top)
  b = jnp.minimum(_span_log_probs(s, ys, ks, num_spans, temp), top)
  a, b = _utils.mask_inputs(mask, a, b)
  a, b = jnp.minimum(a, top), jnp.minimum(b, top)  # Masked slots (0 now) stay finite too.
  p = jnp.exp(a)
  log1m = lambda x: jnp.log(-jnp.expm1(x))  # log(1 - e^x), accurate for x near 0.
  loss = p * (a - b) + (1 - p) * (log1m(a) - log1m(b))
  return _utils.apply_mask(loss, mask)


def next_byte_kl(student_logits: jax.typing.ArrayLike,
                 teacher_logits: jax.typing.ArrayLike,
                 first_byte: jax.typing.ArrayLike,
                 *,
                 temperature: jax.typing.ArrayLike = 1.0,
                 mask: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""KL from a byte-level teacher's next byte to the student's next token's first byte.

  Where both models predict the same text after the same text (a position where a student token
  starts), the student's next-token distribution implies a distribution over the next *byte*:
  the first byte of its next token. A byte-level teacher predicts that byte directly, so the two
  compare exactly, with no approximation for tokens the student's vocabulary splits differently:

  .. math::
    p_t = \mathrm{softmax}(z_t / T),\qquad
    q(b) = \sum_{v:\ \mathrm{first}(v) = b} \mathrm{softmax}(z_s / T)_v,\qquad
    \ell = \sum_b p_t(b) \log\frac{p_t(b)}{q(b)}

  Student entries that map to no teacher entry (``first_byte = -1``: special tokens, bytes the
  teacher's vocabulary lacks) add to no ``q(b)``.

  Args:
    student_logits: student logits at aligned positions, ``[..., V_s]`` (e.g. ``[B, S, V_s]``
      gathered at span starts by ``kdjax.lm.gather_positions``).
    teacher_logits: the byte-level teacher's logits at the same positions, ``[..., V_t]``.
    first_byte: int ``[V_s]``: the teacher's id of the first byte of each student vocabulary
      entry, or -1.
    temperature: ``T > 0``, dividing both sides' logits.
    mask: bool or 0/1 flags of the aligned positions, shape ``logits.shape[:-1]``; masked
      positions return exactly 0.

  Returns:
    One value per position, ``student_logits.shape[:-1]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> s = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))  # tokens 'a', 'ab', 'b'
    >>> t = jnp.log(jnp.array([[0.75, 0.25]]))       # bytes 'a', 'b'
    >>> round(float(losses.next_byte_kl(s, t, jnp.array([0, 0, 1]))[0]), 6)
    0.0

  References:
    Forward KL on the next byte, KL(teacher || student), like Hinton et al. 2015's soft targets
    without the ``T^2`` factor; the student's byte marginal is the byte-level view of a subword
    model's next-token distribution used to compare tokenizers (e.g. B. Phan et al., "Exact
    Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles",
    2024).
  """
  s, t = _utils.as_float(student_logits, teacher_logits, what="logits")
  fb = jnp.asarray(first_byte)
  if s.ndim < 1 or t.ndim < 1 or s.shape[:-1] != t.shape[:-1]:
    raise ValueError(f"student logits have shape {s.shape} and teacher logits {t.shape}; they "
                     "must share every axis but the vocabulary: gather both at aligned "
                     "positions first (kdjax.lm.gather_positions)")
  if fb.shape != s.shape[-1:] or not jnp.issubdtype(fb.dtype, jnp.integer):
    raise ValueError(f"first_byte must be integers of shape [{s.shape[-1]}] (one per student "
                     f"vocabulary entry), got {fb.dtype}{list(fb.shape)}")
  s, t, mask = _utils.checked_positions(s, t, temperature=temperature, mask=mask,
                                        what="the aligned positions (logits.shape[:-1])")
  temp = jnp.asarray(temperature, s.dtype)
  log_p = _utils.log_softmax(t, temp)
  # [V_s, V_t] map of each student entry onto its first byte; -1 matches no column.
  onto = (fb[:, None] == jnp.arange(t.shape[-1])[None, :]).astype(s.dtype)
  q = jax.nn.softmax(s / temp, axis=-1) @ onto
  log_q = jnp.log(jnp.maximum(q, jnp.finfo(s.dtype).tiny))
  p = jnp.exp(log_p)
  return _utils.apply_mask(jnp.sum(p * (log_p - log_q), axis=-1), mask)

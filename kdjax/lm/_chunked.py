"""Vocabulary-scale divergences that never hold ``[tokens, vocab]`` logits.

A language model's logits are ``hidden @ head``: ``[tokens, D] @ [D, V]``. With a large
vocabulary (Gemma's 262,144 entries) the logits of two models, their softmaxes and their
gradients dominate a distillation step's memory. :func:`chunked_divergence` takes the final
hidden states and output heads instead (the decoder's ``pre_logits`` and ``head`` taps) and
runs the divergence over ``chunk_size`` tokens at a time in a ``lax.scan`` whose body is
rematerialised (``jax.checkpoint``): the forward pass keeps one scalar per chunk, the backward
pass recomputes one chunk's logits at a time, so peak memory holds ``[chunk_size, V]``.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax.losses import _language
from kdjax.losses import _utils


def _logits(hidden, head, softcap):
  if hidden.dtype != head.dtype:
    hidden, head = hidden.astype(jnp.float32), head.astype(jnp.float32)
  logits = jnp.dot(hidden, head, preferred_element_type=jnp.float32)
  return logits if softcap is None else jnp.tanh(logits / softcap) * softcap


def chunked_divergence(student_hidden: jax.typing.ArrayLike,
                       student_head: jax.typing.ArrayLike,
                       teacher_hidden: jax.typing.ArrayLike,
                       teacher_head: jax.typing.ArrayLike,
                       *,
                       mask: jax.typing.ArrayLike | None = None,
                       beta: float = 0.0,
                       temperature: float = 1.0,
                       chunk_size: int = 512,
                       student_softcap: float | None = None,
                       teacher_softcap: float | None = None) -> jax.Array:
  r"""The generalized JSD of two language models' next-token distributions, chunk by chunk.

  With :math:`z_s = h_s W_s` and :math:`z_t = h_t W_t` (optionally soft-capped,
  :math:`c \tanh(z / c)`), this is exactly :func:`kdjax.losses.generalized_jsd`
  ``(z_s, z_t, beta=beta, temperature=temperature, mask=mask)``: the masked token mean of

  .. math::
    \beta\, \mathrm{KL}(p_t \,\|\, m) + (1 - \beta)\, \mathrm{KL}(p_s \,\|\, m),\quad
    m = \beta p_t + (1 - \beta) p_s,\quad p = \mathrm{softmax}(z / T)

  (``beta = 0``: forward KL(teacher || student); ``beta = 1``: reverse KL(student || teacher)),
  computed ``chunk_size`` tokens at a time so neither model's ``[tokens, vocab]`` logits exist
  whole, in the forward or the backward pass. Gradients flow to all four inputs (wrap the
  teacher's in ``jax.lax.stop_gradient`` as the step does).

  Args:
    student_hidden: ``[..., D_s]`` final hidden states (e.g. ``[B, L, D_s]``).
    student_head: ``[D_s, V]`` output head.
    teacher_hidden: ``[..., D_t]``, same leading shape.
    teacher_head: ``[D_t, V]``.
    mask: ``hidden.shape[:-1]`` (or ``[B]``) bool or 0/1; masked tokens are left out.
    beta: a Python number in ``[0, 1]``.
    temperature: ``T > 0``, dividing both models' logits.
    chunk_size: tokens per chunk (the last chunk is padded and masked).
    student_softcap, teacher_softcap: final-logit soft-capping of either model (Gemma 2).

  Returns:
    A scalar, float32: the masked token mean (0 when the mask keeps nothing).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax import lm, losses
    >>> ks = jax.random.split(jax.random.key(0), 4)
    >>> hs, ws = jax.random.normal(ks[0], (2, 5, 8)), jax.random.normal(ks[1], (8, 32))
    >>> ht, wt = jax.random.normal(ks[2], (2, 5, 8)), jax.random.normal(ks[3], (8, 32))
    >>> a = lm.chunked_divergence(hs, ws, ht, wt, beta=0.5, chunk_size=4)
    >>> b = losses.generalized_jsd(hs @ ws, ht @ wt, beta=0.5)
    >>> bool(jnp.allclose(a, b, rtol=1e-5))
    True

  References:
    R. Agarwal et al., "On-Policy Distillation of Language Models" (GKD), 2024, and TRL's
    ``generalized_jsd_loss`` for the convention (no ``T^2`` factor).
  """
  beta = _language.check_beta(beta)
  _utils.check_temperature(temperature)
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or (
      chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
  hs, ws, ht, wt = _utils.as_float(student_hidden, student_head, teacher_hidden, teacher_head,
                                   what="hidden states and heads")
  if ws.ndim != 2 or wt.ndim != 2:
    raise ValueError(f"heads must be [hidden, vocab] matrices, got student {list(ws.shape)} and "
                     f"teacher {list(wt.shape)}")
  if hs.shape[-1] != ws.shape[0] or ht.shape[-1] != wt.shape[0]:
    raise ValueError(f"hidden widths must match the heads' rows: student {hs.shape[-1]} vs "
                     f"{ws.shape[0]}, teacher {ht.shape[-1]} vs {wt.shape[0]}")
  if ws.shape[1] != wt.shape[1]:
    raise ValueError(f"student and teacher heads have {ws.shape[1]} and {wt.shape[1]} "
                     "vocabulary entries; both models must share one vocabulary")
  if hs.shape[:-1] != ht.shape[:-1]:
    raise ValueError(f"student hidden states {list(hs.shape)} and teacher hidden states "
                     f"{list(ht.shape)} must have the same leading (token) shape")
  mask = _utils.check_mask(mask, hs.shape[:-1], "the per-token loss (hidden.shape[:-1])")
  n = 1
  for d in hs.shape[:-1]:
    n *= d
  keep = (jnp.ones((n,), jnp.bool_) if mask is None
          else jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (hs.ndim - 1 - mask.ndim)),
                                hs.shape[:-1]).reshape(n))
  chunk = min(int(chunk_size), n)
  chunks = -(-n // chunk)
  pad = chunks * chunk - n

  def split(x):
    x = x.reshape(n, *x.shape[len(hs.shape) - 1:])
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(chunks, chunk, *x.shape[1:])

  xs = (split(hs), split(ht), split(keep))

  @jax.checkpoint
  def chunk_sum(ws, wt, hs_c, ht_c, keep_c):
    hs_c, ht_c = _utils.mask_inputs(keep_c, hs_c, ht_c)
    s = _logits(hs_c, ws, student_softcap)
    t = _logits(ht_c, wt, teacher_softcap)
    per_token = _language.generalized_jsd_per_token(s, t, beta, temperature)
    return jnp.sum(_utils.apply_mask(per_token, keep_c))

  def body(total, x):
    return total + chunk_sum(ws, wt, *x), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
  count = jnp.sum(keep.astype(jnp.float32))
  return total / jnp.maximum(count, jnp.ones((), jnp.float32))

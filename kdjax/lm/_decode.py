"""Decoding with fixed shapes: greedy and length-normalised beam search.

Both loop over the new positions with ``jax.lax.fori_loop`` and run the model's full-length
forward pass on a ``[batch, prompt + max_new_tokens]`` buffer at every step, reading the logits
at the last filled position. Under a causal mask the unfilled tail (``pad_id``) cannot influence
them, so no key-value cache is needed; this costs ``max_new_tokens`` full forwards, which is what
small models on a CPU or a single accelerator can afford, and keeps every shape static so the
whole decode compiles once::

  decode = jax.jit(lm.greedy_decode, static_argnums=(0, 4), static_argnames=("eos_id", "pad_id"))
  sequences = decode(model, params, model_state, prompts, 32)   # [B, P + 32]

Prompts share one length (a ``[batch, prompt_length]`` array); the model must accept sequences
of ``prompt_length + max_new_tokens`` positions (the zoo's ``transformer_lm``: ``max_len``).
"""
from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.models import Model


def _check(prompt_tokens, max_new_tokens):
  prompt = jnp.asarray(prompt_tokens)
  if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer) or prompt.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be integer [batch, prompt_length >= 1], got "
                     f"{prompt.dtype}{list(prompt.shape)}")
  if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer (a static argument under jit), "
                     f"got {max_new_tokens!r}")
  return prompt.astype(jnp.int32)


def _next_log_probs(model: Model, params, model_state, sequences, position):
  """``log softmax`` of the logits predicting ``sequences[:, position]``, ``[batch, vocab]``."""
  out, _ = model.apply(params, model_state, sequences, train=False, rng=None)
  logits = jax.lax.dynamic_index_in_dim(out.logits, position - 1, axis=1, keepdims=False)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def greedy_decode(model: Model, params: Any, model_state: Any, prompt_tokens: jax.Array,
                  max_new_tokens: int, *, eos_id: int | None = None,
                  pad_id: int = 0) -> jax.Array:
  """Extends each prompt with the model's most likely next token, ``max_new_tokens`` times.

  Args:
    model: a causal language model (tokens ``[B, L]`` -> logits ``[B, L, V]``).
    params, model_state: its variables (e.g. ``model.params`` or a trained state's).
    prompt_tokens: integer ``[B, P]``.
    max_new_tokens: how many tokens to generate (static under ``jit``).
    eos_id: a token that ends a sequence: after it, a sequence is filled with ``pad_id``.
    pad_id: the filler of unused positions.

  Returns:
    int32 ``[B, P + max_new_tokens]``: the prompts followed by their continuations.
  """
  prompt = _check(prompt_tokens, max_new_tokens)
  b, p = prompt.shape
  sequences = jnp.concatenate(
      [prompt, jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1)

  def body(t, carry):
    sequences, done = carry
    position = p + t
    log_probs = _next_log_probs(model, params, model_state, sequences, position)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    token = jnp.where(done, jnp.int32(pad_id), token)
    sequences = jax.lax.dynamic_update_slice_in_dim(sequences, token[:, None], position, axis=1)
    if eos_id is not None:
      done = done | (token == eos_id)
    return sequences, done

  sequences, _ = jax.lax.fori_loop(0, max_new_tokens, body,
                                   (sequences, jnp.zeros((b,), jnp.bool_)))
  return sequences


def beam_search(model: Model, params: Any, model_state: Any, prompt_tokens: jax.Array,
                max_new_tokens: int, beam_size: int, *, eos_id: int | None = None,
                pad_id: int = 0, length_penalty: float = 1.0) -> tuple[jax.Array, jax.Array]:
  r"""Beam search ranked by length-normalised log-probability.

  A hypothesis ``y`` of ``n`` generated tokens (its ``eos_id`` included) scores

  .. math::
    s(y) = \frac{\log p(y \mid \text{prompt})}{n^{\alpha}},\qquad \alpha = \text{length\_penalty}

  At each step every live beam proposes every token and every finished beam (one that produced
  ``eos_id``) proposes only ``pad_id`` at an unchanged score; the ``beam_size`` best proposals by
  ``s`` survive. Without ``eos_id`` all hypotheses have the same length and ``s`` ranks like
  the plain log-probability. ``beam_size=1`` is :func:`greedy_decode`.

  Args:
    model: a causal language model (tokens ``[B, L]`` -> logits ``[B, L, V]``).
    params, model_state: its variables.
    prompt_tokens: integer ``[B, P]``.
    max_new_tokens: how many tokens to generate (static under ``jit``).
    beam_size: beams per prompt, ``1 <= beam_size <= vocab`` (static under ``jit``).
    eos_id: a token that ends a hypothesis.
    pad_id: the filler after ``eos_id``.
    length_penalty: ``alpha``; 0 ranks by total log-probability (favours short hypotheses when
      there is an ``eos_id``), 1 by mean log-probability per token.

  Returns:
    ``(sequences, scores)``: int32 ``[B, beam_size, P + max_new_tokens]`` and float32
    ``[B, beam_size]``, best first (``sequences[:, 0]`` is the answer).

  References:
    Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", 2016 (beam search outputs of
    the teacher as the student's training targets).
  """
  prompt = _check(prompt_tokens, max_new_tokens)
  if not isinstance(beam_size, numbers.Integral) or beam_size < 1:
    raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
  b, p = prompt.shape
  k, total = int(beam_size), p + max_new_tokens
  sequences = jnp.concatenate(
      [prompt, jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1)
  sequences = jnp.broadcast_to(sequences[:, None], (b, k, total))
  # Only beam 0 is live at the start, so the first step does not propose one token k times.
  log_p = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32),
                           (b, k))
  lengths = jnp.zeros((b, k), jnp.int32)
  done = jnp.zeros((b, k), jnp.bool_)
  alpha = jnp.asarray(length_penalty, jnp.float32)

  def body(t, carry):
    sequences, log_p, lengths, done, _ = carry
    position = p + t
    step_log_probs = _next_log_probs(model, params, model_state,
                                     sequences.reshape(b * k, total), position)
    vocab = step_log_probs.shape[-1]
    if k > vocab:
      raise ValueError(f"beam_size={k} exceeds the vocabulary size {vocab}")
    step_log_probs = step_log_probs.reshape(b, k, vocab)
    live = log_p[..., None] + step_log_probs
    finished = jnp.where(jnp.arange(vocab) == pad_id, log_p[..., None], -jnp.inf)
    candidates = jnp.where(done[..., None], finished, live)              # [B, K, V]
    new_lengths = lengths + (~done).astype(jnp.int32)
    scores = candidates / new_lengths[..., None].astype(jnp.float32)**alpha
    best, flat = jax.lax.top_k(scores.reshape(b, k * vocab), k)          # [B, K]
    beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    sequences = jnp.take_along_axis(sequences, beam[..., None], axis=1)
    sequences = jax.lax.dynamic_update_slice_in_dim(sequences, token[..., None], position, axis=2)
    log_p = jnp.take_along_axis(candidates.reshape(b, k * vocab), flat, axis=1)
    lengths = jnp.take_along_axis(new_lengths, beam, axis=1)
    done = jnp.take_along_axis(done, beam, axis=1)
    if eos_id is not None:
      done = done | (token == eos_id)
    return sequences, log_p, lengths, done, best

  carry = (sequences, log_p, lengths, done, jnp.zeros((b, k), jnp.float32))
  sequences, _, _, _, scores = jax.lax.fori_loop(0, max_new_tokens, body, carry)
  return sequences, scores

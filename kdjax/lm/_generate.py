"""Key-value-cache decoding for the zoo's decoder: prefill once, then one token per step.

Shapes are fixed: prompts are a ``[B, P]`` array, **left-padded** (a prompt's last token sits in
column ``P - 1``; ``prompt_lengths[b]`` real tokens end each row), and the cache holds
``P + max_new_tokens`` slots, so every new token of every row is written to the same slot and
the whole decode compiles once. Padding is segment 0 and never attended to by real tokens;
positions count real tokens only, so a short prompt decodes exactly as it would alone.

* :func:`prefill`: runs the prompts, returns the last position's logits and the cache.
* :func:`decode_step`: one token per row at the cache's next slot.
* :func:`sample_logits`: greedy (``key=None``) or temperature / top-k / top-p sampling.
* :func:`generate`: all of it, jitted, with ``eos_id`` handling.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.models import Model, decoder_module
from kdjax.models.zoo import KVCache, init_cache


def _prompt_layout(prompt_tokens, prompt_lengths):
  prompt = jnp.asarray(prompt_tokens)
  if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer) or prompt.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be integer [batch, prompt_length >= 1], got "
                     f"{prompt.dtype}{list(prompt.shape)}")
  b, p = prompt.shape
  if prompt_lengths is None:
    lengths = jnp.full((b,), p, jnp.int32)
  else:
    lengths = jnp.asarray(prompt_lengths).astype(jnp.int32)
    if lengths.shape != (b,):
      raise ValueError(f"prompt_lengths must be [batch]={[b]}, got {list(lengths.shape)}")
  real = jnp.arange(p, dtype=jnp.int32)[None, :] >= (p - lengths)[:, None]   # left padding
  positions = jnp.maximum(jnp.cumsum(real.astype(jnp.int32), axis=1) - 1, 0)
  return prompt.astype(jnp.int32), real.astype(jnp.int32), positions, lengths


def prefill(model: Model, params: Any, prompt_tokens: jax.Array,
            prompt_lengths: jax.Array | None = None, *, max_length: int,
            cache_dtype: Any = None) -> tuple[jax.Array, KVCache]:
  """Runs left-padded prompts through the decoder and fills a fresh cache.

  Args:
    model: a decoder (:func:`kdjax.models.from_hf`, :func:`kdjax.models.decoder_model`).
    params: its parameters.
    prompt_tokens: int ``[B, P]``, left-padded.
    prompt_lengths: int ``[B]`` real tokens per row (default: all ``P``).
    max_length: cache slots, ``>= P`` (``P + max_new_tokens`` for :func:`generate`).
    cache_dtype: dtype of cached keys/values (default: the model's compute dtype).

  Returns:
    ``(logits, cache)``: float32 ``[B, V]`` logits after each prompt's last token, and the
    cache with ``index = P``.
  """
  module = decoder_module(model)
  prompt, segments, positions, _ = _prompt_layout(prompt_tokens, prompt_lengths)
  b, p = prompt.shape
  if max_length < p:
    raise ValueError(f"max_length={max_length} is shorter than the prompts ({p} tokens)")
  cache = init_cache(module.config, b, max_length, cache_dtype or module.dtype)
  logits, cache = module.apply({"params": params}, prompt, positions, segments, cache,
                               method=type(module).decode)
  return logits[:, -1], cache


def decode_step(model: Model, params: Any, tokens: jax.Array, positions: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row (``tokens``, ``positions``: int ``[B]``) at slot ``cache.index``.

  Returns float32 logits ``[B, V]`` for the next token and the advanced cache.
  """
  module = decoder_module(model)
  tokens = tokens.astype(jnp.int32)[:, None]
  logits, cache = module.apply({"params": params}, tokens, positions.astype(jnp.int32)[:, None],
                               jnp.ones_like(tokens), cache, method=type(module).decode)
  return logits[:, 0], cache


def sample_logits(logits: jax.Array, key: jax.Array | None = None, *, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None) -> jax.Array:
  """Picks one token per row of ``logits`` ``[B, V]``.

  ``key=None`` is greedy (argmax). Otherwise the token is drawn from
  ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and then to
  the smallest set whose probability reaches ``top_p`` (nucleus sampling; the most likely token
  is always kept), renormalised.

  Returns:
    int32 ``[B]``.

  References:
    A. Holtzman et al., "The Curious Case of Neural Text Degeneration", 2020 (top-p).
  """
  logits = logits.astype(jnp.float32)
  if key is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  neg = jnp.finfo(jnp.float32).min
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, neg)
  if top_p is not None:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs        # mass of strictly more likely tokens
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_sampling(max_new_tokens, temperature, top_k, top_p):
  if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  if top_k is not None and (not isinstance(top_k, numbers.Integral) or top_k < 1):
    raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def generate(model: Model, params: Any, prompt_tokens: jax.Array,
             prompt_lengths: jax.Array | None = None, *, max_new_tokens: int,
             key: jax.Array | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None,
             pad_id: int = 0) -> jax.Array:
  """Continues left-padded prompts with a key-value cache: greedy, or sampled with ``key``.

  One prefill, then ``max_new_tokens`` single-token steps in a ``lax.fori_loop``; jitted (the
  model, ``max_new_tokens``, ``top_k``, ``eos_id`` and ``pad_id`` are static). Greedy decoding
  gives the same tokens as :func:`kdjax.lm.greedy_decode` (full forward per token). Step ``t``
  samples with ``fold_in(key, t)``.

  Args:
    model: a decoder (:func:`kdjax.models.from_hf`, :func:`kdjax.models.decoder_model`).
    params: its parameters (e.g. ``model.params`` or a trained state's).
    prompt_tokens: int ``[B, P]``, **left-padded**.
    prompt_lengths: int ``[B]``, real tokens per row (default: all ``P``).
    max_new_tokens: tokens to generate.
    key: ``None`` for greedy decoding, else the sampling key.
    temperature, top_k, top_p: sampling settings (:func:`sample_logits`).
    eos_id: ends a row: its later tokens are ``pad_id``.
    pad_id: filler after ``eos_id``.

  Returns:
    int32 ``[B, P + max_new_tokens]``: the prompts as given, then the continuations.
  """
  _check_sampling(max_new_tokens, temperature, top_k, top_p)
  decoder_module(model)
  return _generate(model, params, prompt_tokens, prompt_lengths, key, temperature, top_p,
                   max_new_tokens=int(max_new_tokens), top_k=top_k, eos_id=eos_id,
                   pad_id=int(pad_id), greedy=key is None, nucleus=top_p is not None)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=(
    "max_new_tokens", "top_k", "eos_id", "pad_id", "greedy", "nucleus"))
def _generate(model, params, prompt_tokens, prompt_lengths, key, temperature, top_p, *,
              max_new_tokens, top_k, eos_id, pad_id, greedy, nucleus):
  prompt, _, _, lengths = _prompt_layout(prompt_tokens, prompt_lengths)
  b, p = prompt.shape
  logits, cache = prefill(model, params, prompt, lengths, max_length=p + max_new_tokens)
  out = jnp.concatenate([prompt, jnp.full((b, max_new_tokens), pad_id, jnp.int32)], axis=1)

  def body(t, carry):
    out, logits, cache, done = carry
    step_key = None if greedy else jax.random.fold_in(key, t)
    token = sample_logits(logits, step_key, temperature=temperature, top_k=top_k,
                          top_p=top_p if nucleus else None)
    token = jnp.where(done, jnp.int32(pad_id), token)
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], p + t, axis=1)
    if eos_id is not None:
      done = done | (token == eos_id)
    logits, cache = decode_step(model, params, token, lengths + t, cache)
    return out, logits, cache, done

  out, *_ = jax.lax.fori_loop(0, max_new_tokens, body,
                              (out, logits, cache, jnp.zeros((b,), jnp.bool_)))
  return out

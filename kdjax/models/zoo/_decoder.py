"""Decoder-only language models of the Llama, Qwen2, Qwen3, Gemma 2 and Gemma 3 (text) families.

One Linen module, :class:`Decoder`, switched by a :class:`DecoderConfig`: rotary position
embeddings (per-layer-type base and ``linear`` / ``llama3`` scaling), RMSNorm (``w * x`` or
Gemma's ``(1 + w) * x``), SwiGLU / GeGLU MLPs, grouped-query attention, q/k norms (Qwen3,
Gemma 3), Gemma's embedding scaling and sandwich norms (post-attention, pre/post feed-forward),
attention and final logit soft-capping, sliding-window layers and ``query_pre_attn_scalar``.

Inputs are integer tokens ``[B, L]`` or a mapping ``{'tokens', 'segment_ids', 'positions'}``
(packed sequences: a token attends only to earlier tokens of its own segment; ``positions``
feed the rotary embedding and restart at each segment). Parameters are named like the Hugging
Face checkpoints they load from (``blocks_{i}/q_proj/kernel`` is ``model.layers.{i}.self_attn.
q_proj.weight`` transposed), so :mod:`kdjax.models._hf` is a table of names.

Taps: ``blocks_{i}`` (the residual stream after block ``i``, ``[B, L, D]``), ``blocks_{i}/o_proj``
(the attention sub-layer's output), ``blocks_{i}/attn_probs`` (``[B, H, L, L]``, float32),
``pre_logits`` (the final normalised hidden state, ``[B, L, D]``) and ``head`` (the output head
``[D, V]``; the embedding transposed when tied), so a loss can form logits chunk by chunk
(:func:`kdjax.lm.chunked_divergence`).

:meth:`Decoder.decode` runs the same blocks on a fixed-shape key-value cache (:class:`KVCache`):
a prefill writes the prompt, each further call appends tokens at ``cache.index``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FULL, SLIDING = "full", "sliding"
ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The architecture of a :class:`Decoder` (hashable; a static field of the module).

  Attributes:
    vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim:
      sizes (``num_heads`` must be a multiple of ``num_kv_heads``).
    rope_theta: the rotary base of full-attention layers.
    rope_scaling: ``(('rope_type', 'linear' | 'llama3'), ('factor', ...), ...)`` or ``()``.
    local_rope_theta, local_rope_scaling: the same for sliding-window layers (Gemma 3); ``None``
      uses the full layers' values.
    rms_norm_eps: RMSNorm epsilon.
    norm_plus_one: Gemma's RMSNorm, ``(1 + w) * x`` computed in float32.
    activation: ``'silu'`` (SwiGLU) or ``'gelu_tanh'`` (GeGLU).
    tie_embeddings: the output head is the embedding, transposed.
    qkv_bias, o_bias, mlp_bias: biases of the q/k/v, output and MLP projections.
    qk_norm: RMSNorm over ``head_dim`` of queries and keys before the rotary embedding.
    embed_scale: multiply embeddings by ``sqrt(hidden_size)`` (Gemma).
    sandwich_norms: Gemma 2/3's post-attention and pre/post feed-forward norms.
    attn_softcap, final_softcap: ``c * tanh(x / c)`` on attention scores / output logits.
    sliding_window: keys at most ``sliding_window - 1`` positions back, on sliding layers.
    layer_types: ``'full'`` or ``'sliding'`` per layer (empty: all full).
    query_pre_attn_scalar: scores are scaled by ``query_pre_attn_scalar ** -0.5`` instead of
      ``head_dim ** -0.5``.
    family: the Hugging Face ``model_type`` this architecture is saved as (``'llama'``,
      ``'qwen2'``, ``'qwen3'``, ``'gemma2'``, ``'gemma3_text'``).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: Any = ()
  local_rope_theta: float | None = None
  local_rope_scaling: Any = None
  rms_norm_eps: float = 1e-6
  norm_plus_one: bool = False
  activation: str = "silu"
  tie_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  embed_scale: bool = False
  sandwich_norms: bool = False
  attn_softcap: float | None = None
  final_softcap: float | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] = ()
  query_pre_attn_scalar: float | None = None
  family: str = "llama"

  def __post_init__(self):
    freeze = lambda s: tuple(sorted(dict(s).items())) if s is not None else None  # noqa: E731
    object.__setattr__(self, "rope_scaling", freeze(self.rope_scaling or ()))
    if self.local_rope_scaling is not None:
      object.__setattr__(self, "local_rope_scaling", freeze(self.local_rope_scaling))
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"DecoderConfig.{name} must be a positive integer, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig: num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"DecoderConfig.activation must be one of {ACTIVATIONS}, "
                       f"got {self.activation!r}")
    if self.layer_types and len(self.layer_types) != self.num_layers:
      raise ValueError(f"DecoderConfig.layer_types has {len(self.layer_types)} entries for "
                       f"{self.num_layers} layers")
    bad = sorted(set(self.layer_types) - {FULL, SLIDING})
    if bad:
      raise ValueError(f"DecoderConfig.layer_types holds {bad}; use {FULL!r} or {SLIDING!r}")
    if SLIDING in self.layer_types and not self.sliding_window:
      raise ValueError("DecoderConfig has sliding layers but no sliding_window")
    for scaling in (self.rope_scaling, self.local_rope_scaling or ()):
      rope_type = dict(scaling).get("rope_type", "default")
      if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling.rope_type {rope_type!r} is not supported; kdjax's "
                         f"decoder implements {ROPE_TYPES}")

  def layer_type(self, i: int) -> str:
    return self.layer_types[i] if self.layer_types else FULL


class KVCache(NamedTuple):
  """A fixed-size key-value cache of ``max_length`` slots.

  Attributes:
    keys, values: one ``[B, max_length, num_kv_heads, head_dim]`` array per layer (post-RoPE
      keys).
    segment_ids: int32 ``[B, max_length]``: the segment of each written slot; ``-1`` for
      slots not written yet (they match no query). Left padding is segment 0, real tokens 1.
    index: int32 scalar: the slot the next token is written to.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  segment_ids: jax.Array
  index: jax.Array


def init_cache(config: DecoderConfig, batch_size: int, max_length: int,
               dtype: Any = jnp.float32) -> KVCache:
  """An empty :class:`KVCache` for ``batch_size`` sequences of up to ``max_length`` tokens."""
  shape = (batch_size, max_length, config.num_kv_heads, config.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in zeros),
                 segment_ids=jnp.full((batch_size, max_length), -1, jnp.int32),
                 index=jnp.zeros((), jnp.int32))


def inverse_frequencies(head_dim: int, theta: float, scaling: Any) -> np.ndarray:
  """RoPE's inverse frequencies ``theta^(-2i/d)``, with ``linear`` or ``llama3`` scaling."""
  scaling = dict(scaling or ())
  inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                       / np.float32(head_dim)))).astype(np.float32)
  rope_type = scaling.get("rope_type", "default")
  if rope_type == "linear":
    inv = inv / np.float32(scaling["factor"])
  elif rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    inv = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def _rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates ``x`` ``[B, T, N, Dh]`` by ``positions`` ``[B, T]`` (the "rotate half" layout)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


class RMSNorm(nn.Module):
  """RMSNorm over the last axis: Llama's ``w * x_hat`` or Gemma's ``(1 + w) * x_hat``."""

  eps: float
  plus_one: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
    scale = scale.reshape((1,) * (x.ndim - 1) + scale.shape)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:  # Gemma: the whole product in float32, then cast.
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class DecoderBlock(nn.Module):
  """One decoder layer: attention and a gated MLP, each with a residual connection."""

  config: DecoderConfig
  layer: int
  dtype: Any
  param_dtype: Any

  def _dense(self, features, bias, name):
    return nn.Dense(features, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(0.02), name=name)

  def _norm(self, name, eps=None):
    c = self.config
    return RMSNorm(c.rms_norm_eps if eps is None else eps, c.norm_plus_one, self.dtype,
                   self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache=None):
    """``x`` ``[B, T, D]``; with ``cache`` (``(keys, values, slot_segments, index)`` of this
    layer) returns ``(x, (keys, values))``, else ``x``."""
    c = self.config
    b, t, _ = x.shape
    kvh, groups, dh = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
    sliding = c.layer_type(self.layer) == SLIDING

    h = self._norm("input_norm")(x)
    q = self._dense(c.num_heads * dh, c.qkv_bias, "q_proj")(h).reshape(b, t, c.num_heads, dh)
    k = self._dense(kvh * dh, c.qkv_bias, "k_proj")(h).reshape(b, t, kvh, dh)
    v = self._dense(kvh * dh, c.qkv_bias, "v_proj")(h).reshape(b, t, kvh, dh)
    if c.qk_norm:
      q, k = self._norm("q_norm")(q), self._norm("k_norm")(k)
    if sliding and c.local_rope_theta is not None:
      scaling = c.local_rope_scaling if c.local_rope_scaling is not None else ()
      inv_freq = inverse_frequencies(dh, c.local_rope_theta, scaling)
    else:
      inv_freq = inverse_frequencies(dh, c.rope_theta, c.rope_scaling)
    q, k = _rope(q, positions, inv_freq), _rope(k, positions, inv_freq)

    query_slots = jnp.arange(t)
    if cache is None:
      keys, values, key_segments, key_slots = k, v, segment_ids, jnp.arange(t)
    else:
      cache_k, cache_v, key_segments, index = cache
      keys = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
      values = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
      key_slots = jnp.arange(keys.shape[1])
      query_slots = query_slots + index
    scale = (c.query_pre_attn_scalar if c.query_pre_attn_scalar else dh) ** -0.5
    q = q.reshape(b, t, kvh, groups, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    scores = _softcap(scores, c.attn_softcap)
    allowed = key_slots[None, :] <= query_slots[:, None]                        # [T, S]
    if sliding:
      allowed = allowed & (key_slots[None, :] > query_slots[:, None] - c.sliding_window)
    allowed = allowed[None] & (segment_ids[:, :, None] == key_segments[:, None, :])  # [B, T, S]
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    self.sow("intermediates", "attn_probs", probs.reshape(b, c.num_heads, t, -1))
    context = jnp.einsum("bkgts,bskd->btkgd", probs.astype(self.dtype), values.astype(self.dtype))
    attn = self._dense(c.hidden_size, c.o_bias, "o_proj")(context.reshape(b, t, -1))
    if c.sandwich_norms:
      attn = self._norm("post_attn_norm")(attn)
    x = x + attn

    h = self._norm("pre_mlp_norm" if c.sandwich_norms else "post_attn_norm")(x)
    act = nn.silu if c.activation == "silu" else lambda y: nn.gelu(y, approximate=True)
    gate = self._dense(c.intermediate_size, c.mlp_bias, "gate_proj")(h)
    up = self._dense(c.intermediate_size, c.mlp_bias, "up_proj")(h)
    h = self._dense(c.hidden_size, c.mlp_bias, "down_proj")(act(gate) * up)
    if c.sandwich_norms:
      h = self._norm("post_mlp_norm")(h)
    x = x + h
    return x if cache is None else (x, (keys, values))


class Decoder(nn.Module):
  """A decoder-only language model: tokens ``[B, L]`` -> float32 logits ``[B, L, V]``.

  See the module docstring for the architectures, inputs and taps. ``dtype`` is the compute
  dtype and ``param_dtype`` the parameters' (float32 or bfloat16 each); RMSNorm statistics,
  attention softmax and the logits are float32.
  """

  config: DecoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  num_classes: int | None = None  # taken so the zoo's create() can pass it; must equal vocab
  bn_axis_name: str | None = None  # no BatchNorm here; taken so every zoo model takes it
  # Rematerialise each block in the backward pass (the same values and gradients; activation
  # memory of the blocks' inputs only, for about one more forward pass of compute).
  remat: bool = False

  def setup(self):
    c = self.config
    if self.num_classes is not None and self.num_classes != c.vocab_size:
      raise ValueError(f"num_classes={self.num_classes} differs from the decoder's vocab_size="
                       f"{c.vocab_size}; a decoder predicts its own vocabulary")
    self.embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype,
                          param_dtype=self.param_dtype,
                          embedding_init=nn.initializers.normal(0.02))
    block = nn.remat(DecoderBlock) if self.remat else DecoderBlock
    self.blocks = [block(c, i, self.dtype, self.param_dtype) for i in range(c.num_layers)]
    self.final_norm = RMSNorm(c.rms_norm_eps, c.norm_plus_one, self.dtype, self.param_dtype)
    if not c.tie_embeddings:
      self.lm_head = self.param("lm_head", nn.initializers.normal(0.02),
                                (c.hidden_size, c.vocab_size), self.param_dtype)

  def _embed(self, tokens):
    x = self.embed(tokens)
    if self.config.embed_scale:
      x = x * jnp.asarray(self.config.hidden_size**0.5, x.dtype)
    return x

  def _logits(self, x):
    h = self.final_norm(x)
    self.sow("intermediates", "pre_logits", h)
    head = self.embed.embedding.T if self.config.tie_embeddings else self.lm_head
    self.sow("intermediates", "head", head)
    logits = jnp.einsum("btd,dv->btv", h, head.astype(h.dtype),
                        preferred_element_type=jnp.float32)
    return _softcap(logits, self.config.final_softcap)

  def __call__(self, inputs: jax.Array | Mapping[str, jax.Array],
               train: bool = False) -> jax.Array:
    del train  # no dropout
    tokens, segment_ids, positions = split_inputs(inputs)
    x = self._embed(tokens)
    for block in self.blocks:
      x = block(x, positions, segment_ids)
    return self._logits(x)

  def decode(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Runs ``tokens`` ``[B, T]`` written at slots ``cache.index ..`` of ``cache``.

    Returns float32 logits ``[B, T, V]`` and the cache with the new keys, values and segments,
    ``index`` advanced by ``T``.
    """
    segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32),
                                            (0, cache.index))
    x = self._embed(tokens)
    keys, values = [], []
    for i, block in enumerate(self.blocks):
      x, (k, v) = block(x, positions, segment_ids,
                        (cache.keys[i], cache.values[i], segments, cache.index))
      keys.append(k)
      values.append(v)
    cache = KVCache(tuple(keys), tuple(values), segments, cache.index + tokens.shape[1])
    return self._logits(x), cache


def split_inputs(inputs) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(tokens, segment_ids, positions)`` from tokens ``[B, L]`` or a mapping with ``'tokens'``
  and optional ``'segment_ids'`` (default one segment) and ``'positions'`` (default
  ``0 .. L-1``)."""
  if isinstance(inputs, Mapping):
    if "tokens" not in inputs:
      raise ValueError(f"decoder inputs as a mapping need a 'tokens' entry, got {sorted(inputs)}")
    tokens = inputs["tokens"]
    segment_ids, positions = inputs.get("segment_ids"), inputs.get("positions")
  else:
    tokens, segment_ids, positions = inputs, None, None
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"the decoder takes integer tokens [batch, length], got "
                     f"{tokens.dtype}{list(tokens.shape)}")
  for name, value in (("segment_ids", segment_ids), ("positions", positions)):
    if value is not None and tuple(value.shape) != tuple(tokens.shape):
      raise ValueError(f"{name} has shape {list(value.shape)} but tokens have "
                       f"{list(tokens.shape)}; give one per token")
  if segment_ids is None:
    segment_ids = jnp.ones(tokens.shape, jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  return tokens, segment_ids.astype(jnp.int32), positions.astype(jnp.int32)


def decoder(*, num_classes: int, rng: jax.Array, taps: Sequence[str] = (),
            dtype: Any = jnp.float32, bn_axis_name: str | None = None,
            input_shape: Sequence[int] = (), remat: bool = False, **fields: Any):
  """The zoo's ``decoder``: a :class:`Decoder` of ``DecoderConfig(vocab_size=num_classes, **fields)``.

  What ``kdjax.models.create("decoder", ...)`` (and ``config.<side>.model='decoder'`` with the
  :class:`DecoderConfig` fields as ``model_kwargs``) builds: a freshly initialised decoder whose
  model serves :func:`kdjax.lm.generate`. ``bn_axis_name`` is accepted like every zoo model's
  and unused (the decoder has no BatchNorm), and so is ``input_shape`` (any length fits).
  ``remat=True`` rematerialises each block in the backward pass (:class:`Decoder`).
  """
  del bn_axis_name, input_shape
  from kdjax.models._hf import decoder_model  # pylint: disable=g-import-not-at-top  (_hf imports the zoo)
  return decoder_model(DecoderConfig(vocab_size=num_classes, **fields), rng=rng, dtype=dtype,
                       taps=taps, name="decoder", remat=remat)

"""Small pre-LayerNorm Transformers: a ViT for 32x32 images and a decoder-only language model.

Both stack ``blocks_{i}`` of ``x + attn(LN(x))``, ``x + mlp(LN(x))``. Inside a block, the module
named ``attn`` is the attention output projection, so the tap ``blocks_{i}/attn`` is the attention
sub-layer's output ([B, L, D], before the residual add), and each block sows its attention
probabilities as ``blocks_{i}/attn_probs`` ([B, H, L, L], float32). ``blocks_{i}`` itself is the
block output (the residual stream). Softmax and LayerNorm statistics run in float32 whatever the
compute dtype.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers

_embed_init = nn.initializers.normal(stddev=0.02)


class Block(nn.Module):
  """A pre-LN Transformer block; ``causal`` masks attention to earlier positions."""

  num_heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  causal: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, length, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(f"model width {dim} is not divisible by num_heads={self.num_heads}")
    head_dim = dim // self.num_heads
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)  # noqa: E731
    ln = lambda name: _layers.layer_norm(dtype=self.dtype, name=name)  # noqa: E731

    qkv = _layers.dense(3 * dim, dtype=self.dtype, name="qkv")(ln("ln1")(x))
    q, k, v = jnp.split(qkv.reshape(b, length, 3 * self.num_heads, head_dim), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
    if self.causal:
      mask = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attn_probs", probs)
    context = jnp.einsum("bhqk,bkhd->bqhd", drop(probs).astype(self.dtype), v)
    attn = _layers.dense(dim, dtype=self.dtype, name="attn")(context.reshape(b, length, dim))
    x = x + drop(attn)

    h = _layers.dense(self.mlp_ratio * dim, dtype=self.dtype, name="mlp_in")(ln("ln2")(x))
    h = _layers.dense(dim, dtype=self.dtype, name="mlp_out")(drop(nn.gelu(h)))
    return x + drop(h)


def _encode(model: nn.Module, x: jax.Array, depth: int, num_heads: int, *, causal: bool,
            train: bool) -> jax.Array:
  """Embedding dropout, ``blocks_{0..depth-1}`` and the final LayerNorm ``ln_f`` of ``model``
  (which has ``mlp_ratio``, ``dropout_rate`` and ``dtype``): [B, L, D] -> [B, L, D]."""
  x = nn.Dropout(model.dropout_rate, deterministic=not train)(x)
  # Rematerialised blocks keep only their inputs for the backward pass and recompute the rest
  # (``train`` is static: it picks the dropout branch).
  block = nn.remat(Block, static_argnums=(2,)) if model.remat else Block
  for i in range(depth):
    x = block(num_heads, model.mlp_ratio, model.dropout_rate, causal=causal, dtype=model.dtype,
              name=f"blocks_{i}")(x, train)
  return _layers.layer_norm(dtype=model.dtype, name="ln_f")(x)


class _Transformer(nn.Module, kw_only=True):
  """The keyword-only fields both transformers take: ``mlp_ratio`` (each block's MLP width over
  the model width), ``dtype`` (the compute dtype; parameters stay float32), ``remat``
  (rematerialise each block in the backward pass: activation memory of one block's inputs per
  layer instead of all its intermediates, for about one more forward pass of compute; the same
  values and gradients) and ``bn_axis_name`` (there is no BatchNorm here; taken so that every
  zoo model takes it)."""

  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  remat: bool = False
  bn_axis_name: str | None = None


class ViT(_Transformer):
  """Vision Transformer (Dosovitskiy et al., 2021) sized for 32x32 images.

  ``stem``: a ``patch_size`` strided convolution to ``dim`` channels (64 tokens at patch 4);
  a class token and learned position embeddings; ``blocks_{0..depth-1}``; a final LayerNorm; the
  head reads the class token. Taps: ``stem`` ([B, H/p, W/p, D]), ``blocks_{i}`` ([B, N+1, D]),
  ``blocks_{i}/attn``, ``blocks_{i}/attn_probs``, ``pre_logits`` ([B, D], the class token).
  """

  num_classes: int
  patch_size: int = 4
  dim: int = 192
  depth: int = 6
  num_heads: int = 3
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=_layers.PARAM_DTYPE, name="stem")(x)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), _layers.PARAM_DTYPE)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    pos = self.param("pos_embed", _embed_init, (1, h * w + 1, d), _layers.PARAM_DTYPE)
    x = _encode(self, x + pos.astype(x.dtype), self.depth, self.num_heads, causal=False,
                train=train)
    return _layers.classifier(self, x[:, 0], self.num_classes)


class TransformerLM(_Transformer):
  """A decoder-only (causal) Transformer language model: tokens [B, L] -> logits [B, L, V].

  ``vocab_size`` is the input vocabulary and ``num_classes`` the output one; give either, the
  other defaults to it. ``stem``: token plus learned position embeddings (``max_len`` positions);
  ``blocks_{0..n_layers-1}``; a final LayerNorm; an untied float32 head. Taps: ``stem``,
  ``blocks_{i}``, ``blocks_{i}/attn`` ([B, L, d_model]), ``blocks_{i}/attn_probs`` ([B, H, L, L]),
  ``pre_logits`` ([B, L, d_model], the final hidden states, one per position).
  """

  vocab_size: int | None = None
  num_classes: int | None = None
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  max_len: int = 128
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    vocab = self.vocab_size or self.num_classes
    classes = self.num_classes or self.vocab_size
    if vocab is None:
      raise ValueError("TransformerLM needs vocab_size (or num_classes)")
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"TransformerLM takes integer tokens [batch, length], got "
                       f"{tokens.dtype}{list(tokens.shape)}")
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; "
                       f"build the model with a larger max_len")
    x = _Embeddings(vocab, self.d_model, self.max_len, self.dtype, name="stem")(tokens)
    x = _encode(self, x, self.n_layers, self.n_heads, causal=True, train=train)
    return _layers.classifier(self, x, classes)


class _Embeddings(nn.Module):
  vocab_size: int
  dim: int
  max_len: int
  dtype: Any

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.dim, embedding_init=_embed_init, dtype=self.dtype,
                 param_dtype=_layers.PARAM_DTYPE, name="token")(tokens)
    pos = self.param("position", _embed_init, (self.max_len, self.dim), _layers.PARAM_DTYPE)
    return x + pos[None, : tokens.shape[1]].astype(x.dtype)

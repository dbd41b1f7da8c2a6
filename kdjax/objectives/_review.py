"""Knowledge review (ReviewKD): attention-based fusion of the student's stages as a term.

The loss, :func:`kdjax.losses.hierarchical_context_loss`, is in :mod:`kdjax.losses`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.objectives._adapters import BatchStatNorm
from kdjax.objectives._base import Needs, Term, as_tuple, masked_mean, select, taps_of

Key = str | Callable[[Any], jax.Array]


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of ``[B, H, W, C]`` to ``[B, h, w, C]`` (source row ``floor(i H / h)``)."""
  h, w = hw
  if x.shape[1:3] == (h, w):
    return x
  rows = np.floor(np.arange(h) * x.shape[1] / h).astype(np.int32)
  cols = np.floor(np.arange(w) * x.shape[2] / w).astype(np.int32)
  return x[:, rows][:, :, cols]


class AttentionFusion(nn.Module):
  """One ABF block: 1x1 conv + BN, attention-weighted fusion with the deeper residual, then a
  3x3 conv + BN to the teacher's channels at the teacher's resolution.

  Returns ``(output, residual)``: the output is compared with the teacher; the residual (the
  fused map before the 3x3 conv) feeds the next, shallower block.
  """

  mid_channels: int
  out_channels: int
  fuse: bool
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, residual, out_hw):
    x = x.astype(jnp.float32)
    x = BatchStatNorm(axis_name=self.axis_name, name="norm_in")(
        nn.Conv(self.mid_channels, (1, 1), use_bias=False, name="conv_in")(x))
    if self.fuse:
      residual = resize_nearest(residual, x.shape[1:3])
      att = nn.sigmoid(nn.Conv(2, (1, 1), name="attention")(
          jnp.concatenate([x, residual], axis=-1)))
      x = x * att[..., 0:1] + residual * att[..., 1:2]
    x = resize_nearest(x, out_hw)
    y = nn.Conv(self.out_channels, (3, 3), padding="SAME", use_bias=False, name="conv_out")(x)
    return BatchStatNorm(axis_name=self.axis_name, name="norm_out")(y), x


class ReviewFusion(nn.Module):
  """Fuses student stages from deep to shallow: stage ``i``'s block sees stage ``i``'s features
  and the residual of stage ``i + 1``'s block (the deepest block fuses nothing)."""

  mid_channels: int
  out_channels: tuple[int, ...]
  out_shapes: tuple[tuple[int, int], ...]
  axis_name: str | None = None

  @nn.compact
  def __call__(self, features):
    n = len(features)
    outputs = [None] * n
    residual = None
    for i in reversed(range(n)):
      block = AttentionFusion(self.mid_channels, self.out_channels[i], fuse=i < n - 1,
                              axis_name=self.axis_name, name=f"abf_{i}")
      outputs[i], residual = block(features[i], residual, self.out_shapes[i])
    return outputs


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_fusion(rng, fusion: ReviewFusion, shapes):
  # One compiled init (cached per configuration) instead of one dispatch per layer.
  return fusion.init(rng, [jnp.zeros(shape, jnp.float32) for shape in shapes])["params"]


def _as_map(x: jax.Array, key, side: str) -> jax.Array:
  if x.ndim == 2:
    return x[:, None, None, :]
  if x.ndim == 4:
    return x
  raise ValueError(f"review_kd reads channel-last maps [B, H, W, C] or vectors [B, C]; the {side} "
                   f"feature {key!r} has shape {x.shape}")


def review_kd(*, student: Sequence[Key], teacher: Sequence[Key], mid_channels: int = 64,
              mask_key: str | None = "mask") -> Term:
  r"""ReviewKD (Chen et al. 2021): review-fused student stages against the teacher's stages.

  The student stages (listed shallow to deep, channel-last ``[B, H, W, C]`` maps or ``[B, C]``
  vectors, treated as 1x1 maps) go through a :class:`ReviewFusion` of attention-based fusion
  blocks from the deepest stage to the shallowest, each block fusing its stage with the
  residual of the deeper one (nearest resize + per-position two-way sigmoid attention) and
  producing the teacher's channel count at the teacher's resolution. The loss is the
  :func:`kdjax.losses.hierarchical_context_loss` between the fused maps and the teacher's maps, summed over
  stages. The fusion blocks are the term's params; their batch normalisation uses the current
  batch's statistics (gathered over devices under ``pmap``).

  Args:
    student: the student's tap paths, shallow to deep.
    teacher: the teacher's tap paths, paired with ``student``.
    mid_channels: the fusion blocks' width.
    mask_key: the batch entry marking real examples.

  References:
    P. Chen, S. Liu, H. Zhao, J. Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.
  """
  s_keys, t_keys = as_tuple(student), as_tuple(teacher)
  if len(s_keys) != len(t_keys):
    raise ValueError(f"student taps {s_keys} and teacher taps {t_keys} must pair up one to one")

  def read(student_out, teacher_out):
    s = [_as_map(select(student_out, k, side="student"), k, "student") for k in s_keys]
    t = [_as_map(select(teacher_out, k, side="teacher"), k, "teacher") for k in t_keys]
    return s, t

  def fusion(t, axis_name):
    return ReviewFusion(mid_channels, tuple(x.shape[-1] for x in t),
                        tuple(tuple(x.shape[1:3]) for x in t), axis_name=axis_name)

  def init(rng, student_out, teacher_out, batch):
    del batch
    s, t = read(student_out, teacher_out)
    return _init_fusion(rng, fusion(t, None), tuple(x.shape for x in s)), {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step
    s, t = read(student_out, teacher_out)
    fused = fusion(t, axis_name).apply({"params": params}, s)
    loss = masked_mean(losses.hierarchical_context_loss(fused, t), batch, mask_key)
    return loss, state, {}

  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher)))

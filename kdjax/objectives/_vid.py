"""Variational information distillation (VID) as an objective term; its loss is
:func:`kdjax.losses.vid_nll`."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.objectives import _adapters
from kdjax.objectives._base import Needs, Term, as_tuple, masked_mean, select, taps_of

Key = str | Callable[[Any], jax.Array]


def vid(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key], hidden: int | None = None,
        init_variance: float = 5.0, eps: float = 1e-5, mask_key: str | None = "mask") -> Term:
  r"""Variational information distillation (Ahn et al. 2019).

  A regressor maps each student feature map (channel last, ``[B, ..., C_s]``) to the mean
  :math:`\mu` of a Gaussian over the teacher's feature map ``[B, ..., C_t]``, with a learned
  per-channel variance :math:`\sigma_c^2 = \mathrm{softplus}(\alpha_c) + \epsilon`; the loss is
  the Gaussian negative log-likelihood of the teacher's features (:func:`kdjax.losses.vid_nll`), which lower-
  bounds (up to constants) the mutual information between student and teacher features. Summed
  over the tap pairs.

  Params, per pair ``i``: ``regressor_{i}`` (a 1x1 convolution, i.e. a dense layer on the channel
  axis; with ``hidden`` a two-layer MLP with a ReLU) and ``log_scale_{i}`` (:math:`\alpha`,
  ``[C_t]``), initialised so that every variance starts at ``init_variance``.

  Args:
    student, teacher: tap paths (or sequences of them, paired) of features with the same
      leading (batch and spatial) shape.
    hidden: hidden width of an MLP regressor; ``None`` for a linear (1x1 conv) regressor.
    init_variance: the variances' initial value (> ``eps``).
    eps: the variances' floor.
    mask_key: the batch entry marking real examples.

  Returns:
    A term whose metrics hold ``variance_{i}``, the mean learned variance of pair ``i``.

  References:
    S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019.
  """
  s_keys, t_keys = as_tuple(student), as_tuple(teacher)
  if len(s_keys) != len(t_keys):
    raise ValueError(f"student taps {s_keys} and teacher taps {t_keys} must pair up one to one")
  if not init_variance > eps > 0:
    raise ValueError(f"need init_variance > eps > 0, got init_variance={init_variance}, eps={eps}")
  alpha0 = math.log(math.expm1(init_variance - eps))  # softplus(alpha0) + eps = init_variance

  def pairs(student_out, teacher_out):
    out = []
    for sk, tk in zip(s_keys, t_keys):
      s = select(student_out, sk, side="student")
      t = select(teacher_out, tk, side="teacher")
      if s.shape[0] != t.shape[0] or s.ndim != t.ndim:
        raise ValueError(f"vid pairs student {sk!r} {s.shape} with teacher {tk!r} {t.shape}; they "
                         "need the same batch size and rank (the regressor maps channels only)")
      # Maps of different resolution: the larger is adaptive-average-pooled, as the reference.
      out.append(losses.match_spatial(s, t) if s.ndim > 2 else (s, t))
    return out

  def projector(channels):
    return _adapters.make_projector("linear" if hidden is None else "mlp", channels, hidden)

  def init(rng, student_out, teacher_out, batch):
    del batch
    params = {}
    for i, ((s, t), key) in enumerate(zip(pairs(student_out, teacher_out),
                                          jax.random.split(rng, len(s_keys)))):
      params[f"regressor_{i}"] = _adapters.init_projector(key, projector(t.shape[-1]), s)
      params[f"log_scale_{i}"] = jnp.full((t.shape[-1],), alpha0, jnp.float32)
    return params, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step, axis_name  # per-example loss: the step's gradient mean covers devices
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for i, (s, t) in enumerate(pairs(student_out, teacher_out)):
      mean = projector(t.shape[-1]).apply({"params": params[f"regressor_{i}"]}, s)
      variance = jax.nn.softplus(params[f"log_scale_{i}"]) + jnp.float32(eps)
      total = total + masked_mean(losses.vid_nll(t, mean, variance), batch, mask_key)
      metrics[f"variance_{i}"] = jnp.mean(variance)
    return total, state, metrics

  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher)))

"""Objective terms for language models, every one masked by padding.

Batches look like ``{'tokens': int [B, L], 'targets': int [B, L], 'mask': bool [B, L]}``. Every
term is :func:`kdjax.objectives.from_loss` of a loss from :mod:`kdjax.losses`: it reads
``batch['mask']`` (``[B, L]`` per token, or ``[B]`` per sequence; any other shape is an error),
zeroes padded positions and passes the mask to the loss (so padding never reaches the math, not
even as NaN gradients) and reduces with the token-weighted :func:`kdjax.losses.masked_mean`.

Hidden-state and attention terms read tapped features (``'blocks_{i}'``,
``'blocks_{i}/attn_probs'``). Several layers pair up either as explicit tap sequences or as a
``layer_map`` of ``(student_layer, teacher_layer)`` pairs filling ``{}`` in tap templates, e.g.
``uniform_layer_map(2, 4) == ((0, 1), (1, 3))``; one loss per pair, summed.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.objectives import Term, from_loss
from kdjax.objectives._base import as_tuple
from kdjax.losses import SPARSE_MODES
from kdjax.objectives import TOPK_INDICES_KEY, TOPK_VALUES_KEY, cached_kd

LayerMap = Sequence[tuple[int, int]]


def token_mask(batch: Mapping[str, Any], mask_key: str | None,
               shape: tuple[int, ...]) -> jax.Array | None:
  """The ``[B, L]`` bool mask of real tokens in ``batch`` (``None`` when there is none).

  ``batch[mask_key]`` may be per token (``[B, L]``) or per sequence (``[B]``, e.g. the padded
  tail of an evaluation set, broadcast over positions); anything else is a ``ValueError``.
  """
  if mask_key is None or not isinstance(batch, Mapping) or batch.get(mask_key) is None:
    return None
  return loss_utils.check_mask(batch[mask_key], shape, f"the per-token loss (batch[{mask_key!r}])")


def uniform_layer_map(n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
  """Pairs each student layer with the last teacher layer of its equal share of the teacher.

  Student layer ``i`` (0-based) learns from teacher layer ``(i + 1) * n_teacher // n_student - 1``:
  with twice as many teacher layers that is ``2i + 1``, and the last layers always pair up
  (TinyBERT's ``g(m) = m N / M``, Jiao et al. 2020).

  Returns:
    ``((student_layer, teacher_layer), ...)``, one pair per student layer.
  """
  for name, n in (("n_student", n_student), ("n_teacher", n_teacher)):
    if not isinstance(n, numbers.Integral) or n < 1:
      raise ValueError(f"{name} must be a positive number of layers, got {n!r}")
  if n_student > n_teacher:
    raise ValueError(f"the student has more layers ({n_student}) than the teacher "
                     f"({n_teacher}); map a subset explicitly, e.g. layer_map=((0, 0), ...)")
  return tuple((i, (i + 1) * n_teacher // n_student - 1) for i in range(n_student))


def mapped_taps(layer_map: LayerMap, student_tap: str,
                teacher_tap: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The student and teacher tap paths a layer map names: ``'{}'`` filled by each layer index.

  Example: ``mapped_taps(((0, 1), (1, 3)), 'blocks_{}/attn_probs')`` gives
  ``(('blocks_0/attn_probs', 'blocks_1/attn_probs'), ('blocks_1/attn_probs',
  'blocks_3/attn_probs'))``; pass them as the models' ``taps``.
  """
  teacher_tap = student_tap if teacher_tap is None else teacher_tap
  for tap in (student_tap, teacher_tap):
    if not isinstance(tap, str) or "{}" not in tap:
      raise ValueError(f"with a layer_map, taps are templates with '{{}}' for the layer index "
                       f"(e.g. 'blocks_{{}}/attn_probs'), got {tap!r}")
  pairs = tuple((int(s), int(t)) for s, t in layer_map)
  if not pairs:
    raise ValueError("layer_map is empty; use uniform_layer_map(n_student, n_teacher)")
  return (tuple(student_tap.format(s) for s, _ in pairs),
          tuple(teacher_tap.format(t) for _, t in pairs))


def _pair_taps(student_tap, teacher_tap, layer_map):
  if layer_map is not None:
    return mapped_taps(layer_map, student_tap, teacher_tap)
  s_taps, t_taps = as_tuple(student_tap), as_tuple(teacher_tap)
  if len(s_taps) != len(t_taps):
    raise ValueError(f"student taps {s_taps} and teacher taps {t_taps} must pair up one to one "
                     "(or give templates and a layer_map)")
  return s_taps, t_taps


# Response-based, per token ------------------------------------------------------------------


def token_kd_term(temperature: float = 1.0, *, mask_key: str | None = "mask") -> Term:
  """Word-level KD: ``T^2 KL(p_t || p_s)`` per token (:func:`kdjax.losses.kd` with a mask)."""
  return from_loss(losses.kd, mask_key=mask_key, temperature=temperature)


def token_reverse_kd_term(temperature: float = 1.0, *, mask_key: str | None = "mask") -> Term:
  """Reverse KL ``T^2 KL(p_s || p_t)`` per token (MiniLLM, mode-seeking).

  See :func:`kdjax.losses.reverse_kd`.
  """
  return from_loss(losses.reverse_kd, mask_key=mask_key, temperature=temperature)


def token_jensen_shannon_term(temperature: float = 1.0, *,
                              mask_key: str | None = "mask") -> Term:
  """Jensen-Shannon divergence per token (GKD; :func:`kdjax.losses.jensen_shannon`)."""
  return from_loss(losses.jensen_shannon, mask_key=mask_key, temperature=temperature)


def skew_kl_term(alpha: float = 0.1, *, temperature: float = 1.0,
                 mask_key: str | None = "mask") -> Term:
  """Skew KL ``KL(p_t || a p_t + (1 - a) p_s)`` per token (DistiLLM).

  See :func:`kdjax.losses.skew_kl`.
  """
  loss_utils.check_fraction(alpha, "alpha")
  return from_loss(losses.skew_kl, mask_key=mask_key, alpha=alpha, temperature=temperature)


def skew_reverse_kl_term(alpha: float = 0.1, *, temperature: float = 1.0,
                         mask_key: str | None = "mask") -> Term:
  """Skew reverse KL ``KL(p_s || a p_s + (1 - a) p_t)`` per token
  (DistiLLM; :func:`kdjax.losses.skew_reverse_kl`)."""
  loss_utils.check_fraction(alpha, "alpha")
  return from_loss(losses.skew_reverse_kl, mask_key=mask_key, alpha=alpha,
                   temperature=temperature)


def token_cross_entropy_term(label_smoothing: float = 0.0, *, label_key: str = "targets",
                             mask_key: str | None = "mask") -> Term:
  """Next-token cross-entropy of the student against ``batch[label_key]``, masked by padding.

  Targets at masked positions are ignored (any integer, e.g. ``-1``, is fine there). Its metrics
  add ``perplexity``, ``exp`` of the masked mean cross-entropy (without smoothing it is the
  batch's perplexity).
  """
  loss_utils.check_fraction(label_smoothing, "label_smoothing")
  term = from_loss(losses.cross_entropy, teacher=None, labels=True, label_key=label_key,
                   mask_key=mask_key, label_smoothing=label_smoothing)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    loss, state, metrics = term.apply(params, state, student_out, teacher_out, batch, step,
                                      axis_name=axis_name)
    return loss, state, {**metrics, "perplexity": jnp.exp(loss)}

  return term._replace(apply=apply)


# Sparse (top-k) teachers ----------------------------------------------------------------------


def _check_sparse(mode, temperature):
  if mode not in SPARSE_MODES:
    raise ValueError(f"mode must be one of {SPARSE_MODES}, got {mode!r}")
  loss_utils.check_temperature(temperature)


def sparse_kd_term(k: int, *, mode: str = "renormalize", temperature: float = 1.0,
                   mask_key: str | None = "mask") -> Term:
  """Token KD against the teacher's top-``k`` tokens, taken from its logits inside the step.

  ``mode='renormalize'`` matches the student to the teacher's softmax over its top-k tokens;
  ``mode='remainder'`` also matches the probability mass outside them (see
  :func:`kdjax.losses.sparse_kd`). With ``k = vocab`` both equal :func:`token_kd_term`. To skip
  the teacher forward altogether, precompute the top-k with :class:`kdjax.lm.TeacherCache` and
  use :func:`cached_sparse_kd_term`.
  """
  if not isinstance(k, numbers.Integral) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  _check_sparse(mode, temperature)

  def topk_kd(student_logits, teacher_logits, mask=None):
    if k > teacher_logits.shape[-1]:
      raise ValueError(f"k={k} exceeds the vocabulary size {teacher_logits.shape[-1]}")
    values, indices = losses.topk_teacher_logits(
        teacher_logits, int(k), log_probs=mode == "remainder", temperature=temperature)
    return losses.sparse_kd(student_logits, jax.lax.stop_gradient(values), indices,
                            temperature=temperature, mode=mode, mask=mask)

  return from_loss(topk_kd, mask_key=mask_key)


def cached_sparse_kd_term(*, mode: str = "renormalize", temperature: float = 1.0,
                          values_key: str = TOPK_VALUES_KEY, indices_key: str = TOPK_INDICES_KEY,
                          mask_key: str | None = "mask") -> Term:
  """Token KD against a teacher top-k read from the batch: no teacher forward in the step.

  Reads ``batch[values_key]`` (float ``[B, L, k]``) and ``batch[indices_key]`` (int
  ``[B, L, k]``) as written by :class:`kdjax.lm.TeacherCache` (whose :meth:`~TeacherCache.term`
  builds this term with the matching ``mode`` and ``temperature``). ``mode='renormalize'`` wants
  raw teacher logits (any ``temperature`` then works); ``mode='remainder'`` wants the teacher's
  log-probabilities at this very ``temperature``. Use it with ``DistillState.create(teacher=None,
  ...)``.
  It is :func:`kdjax.objectives.cached_kd` with this temperature default.
  """
  return cached_kd(mode=mode, temperature=temperature, values_key=values_key,
                   indices_key=indices_key, mask_key=mask_key)


# Hidden states and attention ------------------------------------------------------------------


def hidden_mse_term(student_tap: str | Sequence[str], teacher_tap: str | Sequence[str], *,
                    adapter: str | None = None, layer_map: LayerMap | None = None,
                    mask_key: str | None = "mask") -> Term:
  """TinyBERT hidden-state loss: per-token MSE between (projected) student and teacher states.

  Args:
    student_tap: tap path(s) of ``[B, L, D_s]`` hidden states (e.g. ``'blocks_0'``), or a
      template ``'blocks_{}'`` with ``layer_map``.
    teacher_tap: the teacher's, paired one to one, ``[B, L, D_t]``.
    adapter: ``'linear'`` learns TinyBERT's ``W_h`` (one per pair), needed when ``D_s != D_t``;
      ``'mlp'`` a two-layer projection; ``None`` compares the states as they are.
    layer_map: ``(student_layer, teacher_layer)`` pairs, e.g. :func:`uniform_layer_map`.
    mask_key: batch key of the padding mask.
  """
  s_taps, t_taps = _pair_taps(student_tap, teacher_tap, layer_map)
  return from_loss(losses.hidden_mse, student=s_taps, teacher=t_taps, adapter=adapter,
                   mask_key=mask_key)


def hidden_cosine_term(student_tap: str | Sequence[str], teacher_tap: str | Sequence[str], *,
                       adapter: str | None = None, layer_map: LayerMap | None = None,
                       mask_key: str | None = "mask") -> Term:
  """DistilBERT's cosine loss: per-token ``1 - cos(h_s, h_t)`` between hidden states.

  Arguments as in :func:`hidden_mse_term`; ``adapter='linear'`` projects the student's states
  onto the teacher's width when they differ.
  """
  s_taps, t_taps = _pair_taps(student_tap, teacher_tap, layer_map)
  return from_loss(losses.cosine_distance, student=s_taps, teacher=t_taps, adapter=adapter,
                   mask_key=mask_key)


def _heads(loss_fn, head_reduction):
  """``loss_fn`` itself, or (``'mean'``) ``loss_fn`` of the head-averaged attention maps."""
  if head_reduction not in (None, "mean"):
    raise ValueError(f"head_reduction must be None or 'mean', got {head_reduction!r}")
  if head_reduction is None:
    return loss_fn

  def mean_heads(s, t, mask=None):  # [B, H, Lq, Lk] -> [B, 1, Lq, Lk]: still distributions.
    return loss_fn(jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True),
                   mask=mask)
  return mean_heads


def attention_kl_term(student_tap: str | Sequence[str] = "blocks_{}/attn_probs",
                      teacher_tap: str | Sequence[str] = "blocks_{}/attn_probs", *,
                      layer_map: LayerMap | None = None, head_reduction: str | None = None,
                      mask_key: str | None = "mask") -> Term:
  """MiniLM attention transfer: per-query ``KL(a_t || a_s)`` of attention probabilities.

  Args:
    student_tap: tap path(s) of ``[B, H, L, L]`` attention probabilities, or a template with
      ``layer_map`` (the default template fits the zoo's ``transformer_lm``).
    teacher_tap: the teacher's, paired one to one.
    layer_map: ``(student_layer, teacher_layer)`` pairs, e.g. :func:`uniform_layer_map`.
    head_reduction: ``None`` compares head by head (equal head counts); ``'mean'`` averages the
      heads of each side first, so head counts may differ.
    mask_key: batch key of the padding mask; masked queries are ignored.
  """
  s_taps, t_taps = _pair_taps(student_tap, teacher_tap, layer_map)
  return from_loss(_heads(losses.attention_kl, head_reduction), student=s_taps, teacher=t_taps,
                   mask_key=mask_key)


def attention_mse_term(student_tap: str | Sequence[str] = "blocks_{}/attn_probs",
                       teacher_tap: str | Sequence[str] = "blocks_{}/attn_probs", *,
                       layer_map: LayerMap | None = None, head_reduction: str | None = None,
                       mask_key: str | None = "mask") -> Term:
  """TinyBERT attention loss: per-query MSE between attention matrices.

  Arguments as in :func:`attention_kl_term`. TinyBERT matches pre-softmax scores; the zoo's
  models expose probabilities, which this term compares just as well.
  """
  s_taps, t_taps = _pair_taps(student_tap, teacher_tap, layer_map)
  return from_loss(_heads(losses.attention_mse, head_reduction), student=s_taps, teacher=t_taps,
                   mask_key=mask_key)

"""Aligning a teacher's and a student's tokenizations of the same text, for cross-tokenizer KD.

Both tokenizations of the text are kept with their byte offsets (:mod:`kdjax.lm` tokenizers'
:class:`~kdjax.lm.Encoding`). A **span** is a piece of text between two consecutive byte positions
where *both* tokenizations have a token boundary: it holds one or more tokens of each side (one
student token over four byte-level teacher tokens, or one teacher token over a character split
into three student tokens). Special tokens (no bytes) belong to no span, whichever side has them,
and multi-byte characters need no care: everything is in bytes.

:func:`cross_tokenizer_windows` cuts the text into fixed-shape training windows of the student's
tokens, each with the teacher's tokens of the same text and the spans both windows hold
completely, as numpy arrays a jitted loss consumes (:func:`kdjax.losses.span_kl` reads the span
ids, :func:`kdjax.losses.uld` the first position of each span via :func:`gather_positions`;
:func:`cross_tokenizer_losses` does both from a batch, :func:`cross_tokenizer_term` as an
objective term).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.lm._metrics import TARGET_BYTES_KEY
from kdjax.lm._tokenizers import Encoding
from kdjax.objectives import Needs, Term

# Batch keys of a cross-tokenizer window set, besides the student's 'tokens', 'targets', 'mask'.
TEACHER_TOKENS_KEY = "teacher_tokens"
TEACHER_TARGETS_KEY = "teacher_targets"
TEACHER_MASK_KEY = "teacher_mask"
STUDENT_SPANS_KEY = "student_spans"
TEACHER_SPANS_KEY = "teacher_spans"
SPAN_MASK_KEY = "span_mask"
STUDENT_SPAN_STARTS_KEY = "student_span_starts"
TEACHER_SPAN_STARTS_KEY = "teacher_span_starts"


def _check_tiling(enc: Encoding, side: str) -> int:
  """The text length; refuses offsets whose non-special tokens do not tile ``[0, n)``."""
  off = np.asarray(enc.offsets)
  if off.ndim != 2 or off.shape != (len(enc.ids), 2):
    raise ValueError(f"{side} offsets must be [num_tokens, 2], got shape {off.shape}")
  real = off[~np.asarray(enc.special, bool)]
  if len(real) == 0:
    raise ValueError(f"the {side} encoding holds no text token")
  if real[0, 0] != 0 or np.any(real[1:, 0] != real[:-1, 1]) or np.any(real[:, 1] <= real[:, 0]):
    raise ValueError(f"the {side} tokens' byte offsets do not tile the text (each token must "
                     "start where the previous one ended, from byte 0); encode the whole text "
                     "with one of kdjax.lm's tokenizers")
  return int(real[-1, 1])


def align_spans(student: Encoding, teacher: Encoding) -> tuple[np.ndarray, np.ndarray,
                                                                 int]:
  """Span ids of every token of two encodings of the same text.

  Args:
    student: the student's encoding of the text.
    teacher: the teacher's encoding of the same text.

  Returns:
    ``(student_span [n_s], teacher_span [n_t], num_spans)``: int64 span ids, consecutive in
    text order from 0, -1 for special tokens. Span ``k`` covers bytes ``[b_{k-1}, b_k)``, where
    ``b`` are the byte positions at which both sides end a token; every span has at least one
    token of each side.
  """
  n_s, n_t = _check_tiling(student, "student"), _check_tiling(teacher, "teacher")
  if n_s != n_t:
    raise ValueError(f"the student's tokens cover {n_s} bytes but the teacher's {n_t}; encode "
                     "the same text with both tokenizers")
  ends = []
  for enc in (student, teacher):
    ends.append(np.asarray(enc.offsets)[~np.asarray(enc.special, bool), 1])
  # Each side's ends strictly increase (the tokens tile the text): keep the student's ends that
  # the teacher shares. Sorted; holds n, the end of the text.
  s_ends, t_ends = ends
  at = np.minimum(np.searchsorted(t_ends, s_ends), len(t_ends) - 1)
  bounds = s_ends[t_ends[at] == s_ends]
  spans = []
  for enc in (student, teacher):
    k = np.searchsorted(bounds, np.asarray(enc.offsets)[:, 1], side="left")
    spans.append(np.where(np.asarray(enc.special, bool), -1, k).astype(np.int64))
  return spans[0], spans[1], len(bounds)


def _span_extent(span: np.ndarray, num_spans: int) -> tuple[np.ndarray, np.ndarray]:
  """First and last token index of each span (spans ascend along the tokens)."""
  real = np.flatnonzero(span >= 0)
  ks = span[real]
  k = np.arange(num_spans)
  return (real[np.searchsorted(ks, k, side="left")],
          real[np.searchsorted(ks, k, side="right") - 1])


def _side_window(ids, target_start, length, bos):
  """Inputs ``[N, L]`` and target indices ``[N, L]`` (into the padded stream) of one side."""
  cols = np.arange(length)
  targets = target_start[:, None] + cols
  inputs = targets - 1
  if bos is not None:
    inputs = np.where(cols == 0, -1, inputs)
  tokens = np.where(inputs < 0, bos if bos is not None else 0, ids[np.maximum(inputs, 0)])
  return tokens.astype(np.int32), targets


def cross_tokenizer_windows(student: Encoding, teacher: Encoding, *, length: int,
                            teacher_length: int, stride: int | None = None,
                            num_spans: int | None = None, student_bos: int | None = None,
                            teacher_bos: int | None = None) -> dict[str, np.ndarray]:
  """Fixed-shape next-token windows of a text for a student and a teacher with other tokenizers.

  Student window ``i`` is the student's ordinary window (as :func:`kdjax.lm.sequence_windows`
  cuts its token stream: ``tokens = s[a : a + L]``, ``targets = s[a + 1 : a + L + 1]``,
  ``a = i * stride``; with ``student_bos``: ``tokens = [bos] + s[a : a + L - 1]``, ``targets =
  s[a : a + L]``). Its text starts at byte ``c``, the start of its first text token. The
  teacher's window starts at its first token at or after byte ``c`` (with ``teacher_bos``, after
  a BOS), so where the two tokenizations share a boundary at ``c`` (always, for a byte-level side)
  both models read the same text; it holds ``teacher_length`` tokens, padded (mask False) at the
  end of the text. A span is kept when all its target tokens lie inside both windows; the tokens
  of the other spans have span id -1 (at most a span or two at each end of a window, when
  ``teacher_length`` holds at least as much text as ``length``).

  Args:
    student: the student's encoding of the whole text.
    teacher: the teacher's encoding of the same text.
    length: student tokens per window, ``L_s``.
    teacher_length: teacher tokens per window, ``L_t``: about ``L_s`` times the ratio of the
      two tokenizers' bytes per token (e.g. ``4 * L_s`` for a byte-level teacher and a BPE
      student of four bytes per token), so the teacher's window covers the student's.
    stride: distance between student window starts (``length``: no overlap).
    num_spans: span slots per window, ``S``; default ``min(L_s, L_t)``, which always suffices.
    student_bos, teacher_bos: a token id to begin every window of that side with (a special
      token only one side may expect), or ``None``.

  Returns:
    A dict of numpy arrays, ``N`` windows:
    ``tokens``, ``targets`` int32 ``[N, L_s]``, ``mask`` bool ``[N, L_s]`` (all True) and
    ``target_bytes`` int32 ``[N, L_s]`` (bytes of text per target, for bits per byte);
    ``teacher_tokens``, ``teacher_targets`` int32 ``[N, L_t]``, ``teacher_mask`` bool;
    ``student_spans`` int32 ``[N, L_s]`` and ``teacher_spans`` int32 ``[N, L_t]``: the window's
    span id of each target in ``[0, S)``, -1 for none; ``span_mask`` bool ``[N, S]``: the span
    slots in use (a prefix); ``student_span_starts`` / ``teacher_span_starts`` int32 ``[N, S]``:
    the position of each span's first target on each side (0 for unused slots), where both
    models predict the start of the same text after the same text.
  """
  if length < 1 or teacher_length < 1:
    raise ValueError(f"length and teacher_length must be >= 1, got {length} and "
                     f"{teacher_length}")
  stride = length if stride is None else stride
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  num_spans = min(length, teacher_length) if num_spans is None else int(num_spans)
  if num_spans < 1:
    raise ValueError(f"num_spans must be >= 1, got {num_spans}")
  s_span, t_span, total = align_spans(student, teacher)
  s_first, s_last = _span_extent(s_span, total)
  t_first, t_last = _span_extent(t_span, total)

  n_s = len(student.ids)
  last_start = n_s - length - (0 if student_bos is not None else 1)
  if last_start < 0:
    raise ValueError(f"the student's {n_s} tokens hold no window of {length} tokens plus its "
                     "next-token target")
  starts = np.arange(0, last_start + 1, stride)
  s_target0 = starts + (0 if student_bos is not None else 1)
  context = np.asarray(student.offsets)[starts, 0]
  t_offsets = np.asarray(teacher.offsets)
  t_target0 = np.searchsorted(t_offsets[:, 0], context, side="left")
  if teacher_bos is None:
    t_target0 = t_target0 + 1

  # Padded streams so that every index of a teacher window exists.
  pad = teacher_length + 1
  t_ids = np.concatenate([np.asarray(teacher.ids), np.zeros(pad, np.int32)])
  t_span_p = np.concatenate([t_span, np.full(pad, -1, np.int64)])
  t_real = np.concatenate([np.ones(len(teacher.ids), bool), np.zeros(pad, bool)])
  s_ids = np.asarray(student.ids)

  tokens, s_idx = _side_window(s_ids, s_target0, length, student_bos)
  t_tokens, t_idx = _side_window(t_ids, t_target0, teacher_length, teacher_bos)

  def complete(k, s0, t0):
    kk = np.maximum(k, 0)
    return ((k >= 0) & (s_first[kk] >= s0) & (s_last[kk] < s0 + length)
            & (t_first[kk] >= t0) & (t_last[kk] < t0 + teacher_length))

  ks = s_span[s_idx]
  kt = t_span_p[t_idx]
  ok_s = complete(ks, s_target0[:, None], t_target0[:, None])
  ok_t = complete(kt, s_target0[:, None], t_target0[:, None])
  big = np.iinfo(np.int64).max
  k0 = np.min(np.where(ok_s, ks, big), axis=1, initial=big)[:, None]
  local_s = np.where(ok_s, ks - k0, -1)
  local_t = np.where(ok_t, kt - k0, -1)
  local_s = np.where(local_s < num_spans, local_s, -1)
  local_t = np.where(local_t < num_spans, local_t, -1)
  count = np.max(local_s, axis=1, initial=-1) + 1
  slots = np.arange(num_spans)
  span_mask = slots[None, :] < count[:, None]
  k_slot = np.where(span_mask, np.where(k0 == big, 0, k0) + slots, 0)
  s_starts = np.where(span_mask, s_first[np.minimum(k_slot, total - 1)] - s_target0[:, None], 0)
  t_starts = np.where(span_mask, t_first[np.minimum(k_slot, total - 1)] - t_target0[:, None], 0)
  s_bytes = student.num_bytes

  return {
      "tokens": tokens,
      "targets": s_ids[s_idx].astype(np.int32),
      "mask": np.ones(tokens.shape, bool),
      TARGET_BYTES_KEY: s_bytes[s_idx].astype(np.int32),
      TEACHER_TOKENS_KEY: t_tokens,
      TEACHER_TARGETS_KEY: t_ids[t_idx].astype(np.int32),
      TEACHER_MASK_KEY: t_real[t_idx],
      STUDENT_SPANS_KEY: local_s.astype(np.int32),
      TEACHER_SPANS_KEY: local_t.astype(np.int32),
      SPAN_MASK_KEY: span_mask,
      STUDENT_SPAN_STARTS_KEY: s_starts.astype(np.int32),
      TEACHER_SPAN_STARTS_KEY: t_starts.astype(np.int32),
  }


def gather_positions(logits: jax.typing.ArrayLike, positions: jax.typing.ArrayLike) -> jax.Array:
  """``logits[b, positions[b, j]]``: ``[B, L, V]`` logits at ``[B, S]`` positions -> ``[B, S, V]``.

  Gathers each side's logits at its span starts (``batch['student_span_starts']``,
  ``batch['teacher_span_starts']``) for :func:`kdjax.losses.uld`.
  """
  logits, positions = jnp.asarray(logits), jnp.asarray(positions)
  if logits.ndim != 3 or positions.ndim != 2 or positions.shape[0] != logits.shape[0]:
    raise ValueError(f"gather_positions takes [B, L, V] logits and [B, S] positions, got "
                     f"{logits.shape} and {positions.shape}")
  return jnp.take_along_axis(logits, positions[..., None].astype(jnp.int32), axis=1)


def cross_tokenizer_losses(student_logits: jax.typing.ArrayLike,
                           teacher_logits: jax.typing.ArrayLike,
                           batch: Mapping[str, Any], *,
                           temperature: float = 1.0,
                           first_byte: jax.typing.ArrayLike | None = None
                           ) -> dict[str, jax.Array]:
  """The cross-tokenizer losses of a batch of :func:`cross_tokenizer_windows`, reduced.

  Args:
    student_logits: ``[B, L_s, V_s]``, the student on ``batch['tokens']``.
    teacher_logits: ``[B, L_t, V_t]``, the teacher on ``batch['teacher_tokens']``.
    batch: the windows' arrays (the span keys of :func:`cross_tokenizer_windows`).
    temperature: ``T`` of the losses.
    first_byte: for a byte-level teacher, int ``[V_s]``: the teacher's id of each student
      entry's first byte (-1: none); adds ``'next_byte_kl'``.

  Returns:
    ``{'uld': scalar, 'span_kl': scalar}`` (and ``'next_byte_kl'``): :func:`kdjax.losses.uld`
    (and :func:`kdjax.losses.next_byte_kl`) at the span starts and
    :func:`kdjax.losses.span_kl`, each a mean over the spans in use.
  """
  span_mask = jnp.asarray(batch[SPAN_MASK_KEY])
  s_at = gather_positions(student_logits, batch[STUDENT_SPAN_STARTS_KEY])
  t_at = gather_positions(teacher_logits, batch[TEACHER_SPAN_STARTS_KEY])
  uld = losses.uld(s_at, t_at, temperature=temperature, mask=span_mask)
  kl = losses.span_kl(student_logits, batch["targets"], batch[STUDENT_SPANS_KEY],
                      teacher_logits, batch[TEACHER_TARGETS_KEY], batch[TEACHER_SPANS_KEY],
                      num_spans=span_mask.shape[-1], temperature=temperature, mask=span_mask)
  out = {"uld": losses.masked_mean(uld, span_mask),
         "span_kl": losses.masked_mean(kl, span_mask)}
  if first_byte is not None:
    nb = losses.next_byte_kl(s_at, t_at, first_byte, temperature=temperature, mask=span_mask)
    out["next_byte_kl"] = losses.masked_mean(nb, span_mask)
  return out


CROSS_TOKENIZER_LOSSES = ("span_kl", "uld", "next_byte_kl")
_SPAN_KEYS = ("targets", STUDENT_SPANS_KEY, TEACHER_TARGETS_KEY, TEACHER_SPANS_KEY, SPAN_MASK_KEY,
              STUDENT_SPAN_STARTS_KEY, TEACHER_SPAN_STARTS_KEY)


def cross_tokenizer_term(loss: str = "span_kl", *, temperature: float = 1.0,
                         first_byte: Any = None) -> Term:
  """An objective term: a cross-tokenizer loss, a mean over the aligned spans.

  :func:`kdjax.losses.span_kl`, :func:`kdjax.losses.uld` or (byte-level teachers)
  :func:`kdjax.losses.next_byte_kl` on a batch of :func:`cross_tokenizer_windows`, reduced over
  the spans in use.

  The teacher's outputs must be its logits on ``batch['teacher_tokens']`` (not on the student's
  ``'tokens'``); the term reads the span keys of the batch (its ``needs`` list them).

  Args:
    loss: ``'span_kl'``, ``'uld'`` or ``'next_byte_kl'``.
    temperature: ``T`` of the loss.
    first_byte: for ``'next_byte_kl'`` (required there), int ``[V_s]``: the byte-level
      teacher's id of each student vocabulary entry's first byte, -1 for none.
  """
  if loss not in CROSS_TOKENIZER_LOSSES:
    raise ValueError(f"loss must be one of {CROSS_TOKENIZER_LOSSES}, got {loss!r}")
  if (loss == "next_byte_kl") != (first_byte is not None):
    raise ValueError("first_byte is needed by loss='next_byte_kl' and by it alone (the "
                     "teacher's id of each student entry's first byte)")
  first_byte = None if first_byte is None else np.asarray(first_byte, np.int32)

  def init(rng, student_out, teacher_out, batch):
    del rng, student_out, teacher_out, batch
    return {}, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, step, axis_name
    missing = [k for k in _SPAN_KEYS if k not in batch]
    if missing:
      raise ValueError(f"the batch has no {missing} entries (it has {sorted(batch)}); build the "
                       "data with kdjax.lm.cross_tokenizer_windows")
    teacher_logits = jax.lax.stop_gradient(teacher_out.logits)
    values = cross_tokenizer_losses(student_out.logits, teacher_logits, batch,
                                    temperature=temperature, first_byte=first_byte)
    return values[loss], state, {}

  return Term(init, apply, Needs(batch=_SPAN_KEYS))

"""Token datasets as numpy arrays: next-token windows, batches with fixed shapes, perplexity.

A dataset is a dict of equally long arrays, ``{'tokens': [N, L], 'targets': [N, L],
'mask': [N, L], ...}``; row ``i`` of every array belongs to sequence ``i``. Extra arrays (a
:class:`~kdjax.lm.TeacherCache`'s top-k) ride along and are sliced with the tokens.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.models import Model


def sequence_windows(stream: np.ndarray, length: int, *,
                     stride: int | None = None) -> dict[str, np.ndarray]:
  """Cuts a 1-D token stream into next-token prediction windows.

  Window ``i`` starts at ``s = i * stride``: ``tokens = stream[s : s + length]``,
  ``targets = stream[s + 1 : s + length + 1]``; the tail that does not fill a window is dropped.

  Args:
    stream: integer ``[T]`` tokens, ``T > length``.
    length: window length ``L``.
    stride: distance between window starts; ``length`` (no overlap) by default.

  Returns:
    ``{'tokens': int32 [N, L], 'targets': int32 [N, L], 'mask': bool [N, L]}`` (all True).
  """
  stream = np.asarray(stream)
  if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
    raise ValueError(f"stream must be a 1-D integer array, got {stream.dtype}{list(stream.shape)}")
  stride = length if stride is None else stride
  if length < 1 or stride < 1:
    raise ValueError(f"length and stride must be >= 1, got length={length}, stride={stride}")
  if stream.shape[0] <= length:
    raise ValueError(f"a stream of {stream.shape[0]} tokens holds no window of {length} tokens "
                     "plus its next-token target")
  starts = np.arange(0, stream.shape[0] - length, stride)
  windows = stream[starts[:, None] + np.arange(length + 1)].astype(np.int32)
  return {"tokens": windows[:, :-1], "targets": windows[:, 1:],
          "mask": np.ones((len(starts), length), bool)}


def _num_rows(data: Mapping[str, Any]) -> int:
  sizes = {"/".join(str(getattr(e, "key", e)) for e in path): len(v)
           for path, v in jax.tree_util.tree_leaves_with_path(data)}
  if not sizes or len(set(sizes.values())) != 1:
    raise ValueError(f"dataset arrays must be non-empty and equally long, got lengths {sizes}")
  return next(iter(sizes.values()))


def batches(data: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0,
            shuffle: bool = True, epochs: int | None = None,
            drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Yields batches (dicts of numpy arrays with ``batch_size`` rows) from a dataset.

  Args:
    data: the dataset's arrays (equally long); entries may be nested dicts of arrays (e.g.
      :func:`pack_sequences`' ``'inputs'``), sliced alike.
    batch_size: rows per batch.
    seed: the shuffle seed; epoch ``e`` uses ``default_rng([seed, e])``, so the order depends on
      nothing else.
    shuffle: permute the rows each epoch.
    epochs: how many passes; ``None`` never stops.
    drop_remainder: drop the last incomplete batch of an epoch. Otherwise it is filled up to
      ``batch_size`` with copies of its first row whose ``mask`` is all False (``data`` must
      have a ``'mask'``), so every batch has the same shape and one compiled step serves all.
  """
  n = _num_rows(data)
  if not drop_remainder and "mask" not in data:
    raise ValueError("drop_remainder=False pads the last batch and marks the padding in "
                     "data['mask']; add a mask (e.g. np.ones(tokens.shape, bool))")
  if batch_size < 1 or (drop_remainder and batch_size > n):
    raise ValueError(f"batch_size={batch_size} must be in [1, {n}] (the number of sequences)")
  epoch = 0
  while epochs is None or epoch < epochs:
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      if len(rows) < batch_size:
        if drop_remainder:
          break
        fill = batch_size - len(rows)
        batch = jax.tree.map(
            lambda v: np.concatenate([v[rows], np.repeat(v[rows[:1]], fill, axis=0)]), dict(data))
        batch["mask"][len(rows):] = False
        yield batch
      else:
        yield jax.tree.map(lambda v: v[rows], dict(data))
    epoch += 1


@functools.partial(jax.jit, static_argnums=0)
def _nll_sum(apply, params, model_state, tokens, targets, mask):
  out, _ = apply(params, model_state, tokens, train=False, rng=None)
  mask = mask.astype(jnp.bool_)
  targets = jnp.where(mask, targets, jnp.zeros((), targets.dtype))
  nll = losses.cross_entropy(out.logits, targets)
  return (jnp.sum(jnp.where(mask, nll, jnp.zeros((), nll.dtype))),
          jnp.sum(mask.astype(jnp.float32)))


def perplexity(model: Model, data: Mapping[str, np.ndarray], *, params: Any = None,
               model_state: Any = None, batch_size: int = 64, input_key: str = "tokens",
               label_key: str = "targets", mask_key: str = "mask") -> float:
  """``exp`` of the mean next-token negative log-likelihood over the masked tokens of ``data``.

  Args:
    model: the language model, run in inference mode.
    data: ``{input_key: [N, L], label_key: [N, L], mask_key: [N, L]}`` (no mask: every token).
    params, model_state: its variables; ``model.params`` / ``model.model_state`` if ``None``
      (pass ``state.params['student']`` / ``state.student_state`` for a trained student).
    batch_size: sequences per forward pass.
    input_key, label_key, mask_key: which arrays of ``data`` hold what.

  Returns:
    The perplexity, a Python float (token-weighted over the whole set).
  """
  params = model.params if params is None else params
  model_state = model.model_state if model_state is None else model_state
  tokens = np.asarray(data[input_key])
  arrays = {"tokens": tokens, "targets": np.asarray(data[label_key]),
            "mask": (np.asarray(data[mask_key], bool) if mask_key in data
                     else np.ones(tokens.shape, bool))}
  total, count = 0.0, 0.0
  for batch in batches(arrays, min(batch_size, len(tokens)), shuffle=False, epochs=1,
                       drop_remainder=False):
    s, c = _nll_sum(model.apply, params, model_state, batch["tokens"], batch["targets"],
                    batch["mask"])
    total, count = total + float(s), count + float(c)
  if count == 0:
    raise ValueError("the mask keeps no token; perplexity is undefined")
  return math.exp(total / count)


def pack_sequences(documents: Sequence[np.ndarray], length: int, *,
                   pad_id: int = 0) -> dict[str, Any]:
  """Packs documents into fixed-length rows of next-token examples, several per row.

  Document ``d`` of ``n`` tokens gives ``n - 1`` examples (``tokens = d[:-1]``, ``targets =
  d[1:]``), so no target ever lies in another document: segment boundaries are masked by
  construction. The examples are laid out in order, a new segment per document; a document
  that does not fit the rest of a row continues in the next row as a new segment (positions
  restart). Segment ids count from 1 within each row; padding is segment 0 with ``mask`` False.

  Args:
    documents: 1-D integer token arrays (documents shorter than 2 tokens are skipped).
    length: row length ``L``.
    pad_id: the token (and target) at padded positions.

  Returns:
    ``{'inputs': {'tokens', 'segment_ids', 'positions'}: int32 [N, L], 'targets': int32 [N, L],
    'mask': bool [N, L]}``. Train with ``DistillState.create(..., input_key='inputs')``: the
    decoders of :mod:`kdjax.models` (teacher and student) read the segments and positions, and
    a token attends only to earlier tokens of its own segment.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  rows: list[list[np.ndarray]] = []
  row: list[np.ndarray] = []
  used = 0
  for doc in documents:
    doc = np.asarray(doc)
    if doc.ndim != 1 or not np.issubdtype(doc.dtype, np.integer):
      raise ValueError(f"documents must be 1-D integer arrays, got {doc.dtype}{list(doc.shape)}")
    if len(doc) < 2:
      continue
    pairs = np.stack([doc[:-1], doc[1:]], axis=1)
    while len(pairs):
      take = min(length - used, len(pairs))
      row.append(pairs[:take])
      pairs, used = pairs[take:], used + take
      if used == length:
        rows.append(row)
        row, used = [], 0
  if row:
    rows.append(row)
  if not rows:
    raise ValueError("no document has the 2 tokens a next-token example needs")
  shape = (len(rows), length)
  tokens = np.full(shape, pad_id, np.int32)
  targets = np.full(shape, pad_id, np.int32)
  segments = np.zeros(shape, np.int32)
  positions = np.zeros(shape, np.int32)
  for i, pieces in enumerate(rows):
    start = 0
    for s, piece in enumerate(pieces, 1):
      end = start + len(piece)
      tokens[i, start:end], targets[i, start:end] = piece[:, 0], piece[:, 1]
      segments[i, start:end] = s
      positions[i, start:end] = np.arange(len(piece))
      start = end
  return {"inputs": {"tokens": tokens, "segment_ids": segments, "positions": positions},
          "targets": targets, "mask": segments > 0}

"""A teacher's top-k next-token distribution, computed once for a token dataset.

Long runs on a fixed token set need not run the teacher at every step: :meth:`TeacherCache.build`
runs it once over ``tokens [N, L]`` and keeps, per position, the ``k`` largest teacher values and
their vocabulary indices as numpy arrays (``N * L * k`` floats and ints; 8 entries of a 64-token
window cost 4 KiB). :meth:`TeacherCache.attach` adds them to the dataset's arrays, a batch iterator
slices them with the tokens, and :meth:`TeacherCache.term` (a
:func:`~kdjax.lm.cached_sparse_kd_term`) reads them from the batch, with ``teacher=None`` in the
:class:`~kdjax.DistillState`.

This is the in-memory form for a script's own loop. On disk, resumable and fingerprinted with the
teacher, tokenizer and rows (top-k or sampled targets, what ``config.teacher_cache`` of a run
builds), see :func:`kdjax.teacher_cache.build_token_cache`.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.lm import _terms
from kdjax.models import Model
from kdjax.objectives import Term


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherCache:
  """Top-k teacher values and indices for every position of a token dataset.

  Attributes:
    values: float32 ``[N, L, k]``: raw teacher logits (``mode='renormalize'``) or teacher
      log-probabilities at ``temperature`` (``mode='remainder'``), in decreasing order.
    indices: int32 ``[N, L, k]`` vocabulary indices of ``values``.
    mode: the :func:`~kdjax.lm.cached_sparse_kd_term` mode the values are made for.
    temperature: the temperature of the log-probabilities (``mode='remainder'``); raw logits
      (``'renormalize'``) work at any temperature and record 1.0.
  """

  values: np.ndarray
  indices: np.ndarray
  mode: str = "renormalize"
  temperature: float = 1.0

  def __post_init__(self):
    if self.mode not in _terms.SPARSE_MODES:
      raise ValueError(f"mode must be one of {_terms.SPARSE_MODES}, got {self.mode!r}")
    if self.values.shape != self.indices.shape or self.values.ndim != 3:
      raise ValueError(f"values {self.values.shape} and indices {self.indices.shape} must both be "
                       "[num_sequences, length, k]")

  @property
  def k(self) -> int:
    return self.values.shape[-1]

  def __len__(self) -> int:
    return self.values.shape[0]

  @classmethod
  def build(cls, teacher: Model, tokens: np.ndarray, k: int, *, mode: str = "renormalize",
            temperature: float = 1.0, params: Any = None, model_state: Any = None,
            batch_size: int = 64) -> "TeacherCache":
    """Runs the teacher (inference mode) over ``tokens [N, L]`` and keeps its top-``k``.

    Args:
      teacher: the teacher model.
      tokens: integer input tokens, ``[N, L]`` (the ``'tokens'`` of the training set, in order).
      k: how many tokens to keep per position, ``1 <= k <= vocab``.
      mode: ``'renormalize'`` (keeps raw logits) or ``'remainder'`` (keeps log-probabilities at
        ``temperature``, for the mass-outside-top-k bucket).
      temperature: the temperature of the log-probabilities (``'remainder'`` only).
      params, model_state: the teacher's variables; ``teacher.params`` / ``.model_state`` if
        ``None``.
      batch_size: sequences per teacher forward (the last chunk is padded, so one compilation).
    """
    if mode not in _terms.SPARSE_MODES:
      raise ValueError(f"mode must be one of {_terms.SPARSE_MODES}, got {mode!r}")
    if not isinstance(k, numbers.Integral) or k < 1:
      raise ValueError(f"k must be a positive integer, got {k!r}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be integer [num_sequences, length], got "
                       f"{tokens.dtype}{list(tokens.shape)}")
    if mode == "renormalize":
      temperature = 1.0
    params = teacher.params if params is None else params
    model_state = teacher.model_state if model_state is None else model_state
    n = tokens.shape[0]
    batch_size = max(1, min(int(batch_size), n))
    topk = _topk_fn(teacher.apply, int(k), mode == "remainder", float(temperature))
    values, indices = [], []
    for start in range(0, n, batch_size):
      chunk = tokens[start:start + batch_size]
      real = chunk.shape[0]
      if real < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
      v, i = topk(params, model_state, jnp.asarray(chunk))
      values.append(np.asarray(v)[:real])
      indices.append(np.asarray(i)[:real])
    return cls(np.concatenate(values).astype(np.float32), np.concatenate(indices).astype(np.int32),
               mode, float(temperature))

  def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The cached arrays of dataset rows ``rows``, under the keys the cached term reads."""
    return {_terms.TOPK_VALUES_KEY: self.values[rows], _terms.TOPK_INDICES_KEY: self.indices[rows]}

  def attach(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``data`` (``{'tokens': [N, L], ...}``, the arrays the cache was built from) plus the cache.

    Any batch iterator that slices every array of ``data`` alike then yields batches the
    cached term can read.
    """
    lengths = {k: len(v) for k, v in data.items()}
    if not lengths or set(lengths.values()) != {len(self)}:
      raise ValueError(f"the cache holds {len(self)} sequences but the data arrays have lengths "
                       f"{lengths}; build the cache from the same tokens")
    return {**data, **self.gather(np.arange(len(self)))}

  def term(self, *, temperature: float | None = None, mask_key: str | None = "mask") -> Term:
    """The :func:`~kdjax.lm.cached_sparse_kd_term` that matches this cache."""
    if temperature is None:
      temperature = self.temperature
    elif self.mode == "remainder" and temperature != self.temperature:
      raise ValueError(f"this cache holds log-probabilities at temperature {self.temperature}; "
                       f"rebuild it with temperature={temperature} or use mode='renormalize'")
    return _terms.cached_sparse_kd_term(mode=self.mode, temperature=temperature,
                                        mask_key=mask_key)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the cache to an ``.npz`` file (refuses to overwrite an existing one)."""
    path = os.fspath(path)
    if os.path.exists(path):
      raise FileExistsError(f"{path} exists; remove it or save the cache elsewhere")
    with open(path, "xb") as f:
      np.savez(f, values=self.values, indices=self.indices, mode=np.asarray(self.mode),
               temperature=np.asarray(self.temperature, np.float64))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "TeacherCache":
    """Reads a cache written by :meth:`save`."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
      missing = {"values", "indices", "mode", "temperature"} - set(f.files)
      if missing:
        raise ValueError(f"{os.fspath(path)} is not a TeacherCache file (missing "
                         f"{sorted(missing)}); write caches with TeacherCache.save")
      return cls(f["values"], f["indices"], str(f["mode"]), float(f["temperature"]))


def _topk_fn(apply, k, log_probs, temperature):

  @jax.jit
  def topk(params, model_state, tokens):
    out, _ = apply(params, model_state, tokens, train=False, rng=None)
    return losses.topk_teacher_logits(out.logits, k, log_probs=log_probs, temperature=temperature)

  return topk

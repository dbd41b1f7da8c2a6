"""A language-model teacher cache: per token of fixed token rows, the teacher's top-k or sampled
targets, built resumably, fingerprinted, read from disk.

The rows are the training set's ``[N, L]`` inputs, in order (plain windows, or packed rows with
``segment_ids`` / ``positions``): what a run's batches slice. Per token the cache holds

* ``targets='topk'``: the teacher's ``k`` largest logits (``mode='renormalize'``) or
  log-probabilities (``'remainder'``) and their vocabulary indices, read by
  :func:`kdjax.objectives.cached_kd`;
* ``targets='sampled'`` (Gemma 3's offline recipe): ``k`` distinct entries sampled from the
  teacher's distribution at ``temperature`` and their weights
  (:func:`kdjax.lm.sample_teacher_targets`), read by :func:`kdjax.objectives.sampled_kd`. The
  key of row ``r`` is ``jax.random.fold_in(jax.random.key(seed), r)``, so the samples of a row do
  not depend on the batches or units it was computed in.

The build is cut into units of ``chunk_size`` rows, each written atomically; a build stopped
halfway resumes and gives the same arrays as one that never stopped. The cache records what
fixes its values (the teacher's parameters, the tokenizer, the token rows, ``targets``, ``k``,
``seed``, ``temperature``, ``weighting``, ``mode``, ``values_dtype``): a cache or a half-built
cache recorded for anything else is stale, and is rebuilt or refused (:class:`TokenCacheStale`,
naming what differs).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import zlib
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import lm
from kdjax import losses
from kdjax import objectives
from kdjax.models import Model
from kdjax.teacher_cache._store import (ON_STALE, VALUE_DTYPES, TeacherCacheCorrupt,
                                        TeacherCacheError, _from_disk, _hash_tree, _read_json,
                                        _save_npy, _write_json, index_dtype,
                                        teacher_fingerprint)

TARGETS = ("topk", "sampled")
_FORMAT = "kdjax-token-cache-1"
_META = "meta.json"
_BUILDING = "building.json"
_UNITS = "units"
# Per targets: (file stem, batch key) of each array, values-like array first.
_ARRAYS = {
    "topk": (("values", objectives.TOPK_VALUES_KEY), ("indices", objectives.TOPK_INDICES_KEY)),
    "sampled": (("weights", objectives.SAMPLED_WEIGHTS_KEY),
                ("indices", objectives.SAMPLED_INDICES_KEY)),
}
# The recorded fields, in the order a stale message names them.
IDENTITY = ("targets", "teacher", "tokenizer", "rows", "k", "seed", "temperature", "weighting",
            "mode", "values_dtype", "format")


class TokenCacheStale(TeacherCacheError):
  """A token cache recorded for another teacher, tokenizer, rows or settings.

  Attributes:
    differences: ``{field: (recorded, wanted)}`` for each field of :data:`IDENTITY` that differs.
  """

  def __init__(self, message: str, differences: Mapping[str, tuple[Any, Any]]):
    super().__init__(message)
    self.differences = dict(differences)


def rows_fingerprint(inputs: Any) -> str:
  """A SHA-256 of token rows: every leaf's tree path, dtype, shape and bytes.

  Args:
    inputs: int ``[N, L]`` tokens, or a dict of ``[N, L]`` arrays (packed rows:
      ``{'tokens', 'segment_ids', 'positions'}``), as the teacher reads them.
  """
  h = hashlib.sha256()
  _hash_tree(h, inputs)
  return h.hexdigest()


class TokenCache:
  """A complete, checked token cache, memory-mapped from its directory.

  Attributes:
    directory: where it lives.
    arrays: ``{batch key: [N, L, k] array}``: for ``'topk'``
      ``{TOPK_VALUES_KEY: values, TOPK_INDICES_KEY: indices}``, for ``'sampled'``
      ``{SAMPLED_WEIGHTS_KEY: weights, SAMPLED_INDICES_KEY: indices}``.
    meta: the recorded fields (:data:`IDENTITY`) and shapes.
  """

  def __init__(self, directory: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    self.directory = directory
    self.arrays = dict(arrays)
    self.meta = dict(meta)

  targets = property(lambda self: str(self.meta["targets"]))
  k = property(lambda self: int(self.meta["k"]))
  mode = property(lambda self: str(self.meta["mode"]))
  temperature = property(lambda self: float(self.meta["temperature"]))

  def __len__(self) -> int:
    return int(self.meta["shape"][0])

  def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The cached arrays of rows ``rows`` (int ``[b]``), ``{batch key: [b, L, k]}``."""
    rows = np.asarray(rows)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise TeacherCacheError(f"rows must be in [0, {len(self)}) for this cache, got "
                              f"[{rows.min()}, {rows.max()}]")
    return {key: np.asarray(a[rows]) for key, a in self.arrays.items()}

  def attach(self, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (the arrays the cache was built from, ``[N, ...]`` each) plus the cache's arrays,
    so any iterator that slices every array alike yields batches the cached terms read."""
    lengths = {k: len(v) for k, v in data.items()}
    if set(lengths.values()) != {len(self)}:
      raise TeacherCacheError(f"the cache holds {len(self)} rows but the data arrays have lengths "
                              f"{lengths}; build the cache from the same token rows")
    return {**data, **self.arrays}


def _identity(teacher, teacher_config, tokenizer, inputs, targets, k, seed, temperature,
              weighting, mode, values_dtype) -> dict[str, Any]:
  return {
      "format": _FORMAT, "targets": targets,
      "teacher": teacher_fingerprint(teacher.params, teacher.model_state,
                                     dict(teacher_config or {"name": teacher.name})),
      "tokenizer": str(tokenizer), "rows": rows_fingerprint(inputs), "k": int(k),
      "seed": int(seed) if targets == "sampled" else None,
      "temperature": float(temperature),
      "weighting": weighting if targets == "sampled" else None,
      "mode": mode if targets == "topk" else None, "values_dtype": values_dtype,
  }


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple]:
  return {f: (recorded.get(f), wanted.get(f)) for f in IDENTITY if recorded.get(f) != wanted.get(f)}


def describe_differences(differences: Mapping[str, tuple[Any, Any]],
                         names: Mapping[str, str] | None = None) -> str:
  """``differences`` as a phrase, each field under ``names[field]`` (e.g. a config key).

  Hashes (teacher, tokenizer, rows) are named without their values; the others as
  ``name (cache X, now Y)``.
  """
  names = names or {}
  parts = []
  for field, (old, new) in differences.items():
    name = names.get(field, field)
    if field in ("teacher", "rows") or (field == "tokenizer" and len(str(new)) > 24):
      parts.append(f"{name} (another {field})")
    else:
      parts.append(f"{name} (cache {old!r}, now {new!r})")
  return ", ".join(parts)


def _check_args(inputs, targets, k, vocab, seed, temperature, weighting, mode, values_dtype,
                batch_size, chunk_size, on_stale):
  if targets not in TARGETS:
    raise TeacherCacheError(f"targets must be one of {TARGETS}, got {targets!r}")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= vocab:
    raise TeacherCacheError(f"k must be an integer in [1, vocab={vocab}], got {k!r}")
  if not isinstance(seed, (int, np.integer)):
    raise TeacherCacheError(f"seed must be an integer, got {seed!r}")
  if not 0.0 < float(temperature) < float("inf"):
    raise TeacherCacheError(f"temperature must be > 0 and finite, got {temperature}")
  if weighting not in lm.SAMPLED_WEIGHTINGS:
    raise TeacherCacheError(f"weighting must be one of {lm.SAMPLED_WEIGHTINGS}, got {weighting!r}")
  if mode not in losses.SPARSE_MODES:
    raise TeacherCacheError(f"mode must be one of {losses.SPARSE_MODES}, got {mode!r}")
  if values_dtype not in VALUE_DTYPES:
    raise TeacherCacheError(f"values_dtype must be one of {sorted(VALUE_DTYPES)}, got "
                            f"{values_dtype!r}")
  for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
    if value is not None and (int(value) != value or value < 1):
      raise TeacherCacheError(f"{name} must be a positive int, got {value!r}")
  if on_stale not in ON_STALE:
    raise TeacherCacheError(f"on_stale must be one of {ON_STALE}, got {on_stale!r}")
  shapes = {np.shape(leaf)[:2] for leaf in jax.tree.leaves(inputs)}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2:
    raise TeacherCacheError(f"token rows must be [N, L] arrays (a dict of them for packed rows), "
                            f"got shapes {sorted(shapes)}")


@functools.lru_cache(maxsize=8)
def _targets_fn(apply, targets, k, temperature, weighting, mode):
  """Jitted: the teacher's targets on a batch of rows, ``(values_like, indices)`` ``[b, L, k]``."""

  @jax.jit
  def run(params, model_state, inputs, keys):
    out, _ = apply(params, model_state, inputs, train=False, rng=None)
    logits = out.logits.astype(jnp.float32)
    if targets == "topk":
      return losses.topk_teacher_logits(logits, k, log_probs=mode == "remainder",
                                        temperature=temperature)

    def one(key, z):
      idx, w = lm.sample_teacher_targets(key, z, k, temperature=temperature,
                                                       weighting=weighting)
      return w, idx

    return jax.vmap(one)(keys, logits)

  return run


def build_token_cache(directory: str | os.PathLike,
                      teacher: Model,
                      inputs: Any,
                      *,
                      targets: str = "topk",
                      k: int,
                      seed: int = 0,
                      temperature: float = 1.0,
                      weighting: str = "renormalized",
                      mode: str = "renormalize",
                      values_dtype: str = "float32",
                      tokenizer: str = "",
                      teacher_config: Mapping[str, Any] | None = None,
                      batch_size: int = 32,
                      chunk_size: int | None = None,
                      on_stale: str = "rebuild",
                      on_chunk: Callable[[int, int], None] | None = None) -> TokenCache:
  """Builds, resumes or reuses the token cache in ``directory`` and returns it, checked.

  In order: a complete cache recorded for these fields is opened (nothing recomputed); a cache or
  half-built cache recorded for other fields is stale: rebuilt with a warning
  (``on_stale='rebuild'``) or refused (``'error'``, :class:`TokenCacheStale`); otherwise the
  missing units of ``chunk_size`` rows are computed (in jitted batches of ``batch_size`` rows,
  the last one padded) and written one by one, then assembled.

  Args:
    directory: the cache's directory (created if needed); only the files the cache writes are
      ever removed from it.
    teacher: the trained teacher; its ``apply`` reads ``inputs``' rows and returns ``[b, L, V]``
      logits.
    inputs: the training rows in order: int ``[N, L]`` tokens, or a dict of ``[N, L]`` arrays
      (packed rows, :func:`kdjax.lm.pack_sequences`' ``'inputs'``).
    targets: ``'topk'`` or ``'sampled'``.
    k: entries per token, ``1 <= k <= V``.
    seed: the sampling seed (``'sampled'``); row ``r`` uses ``fold_in(key(seed), r)``.
    temperature: ``T`` of the sampled distribution, or of ``'remainder'`` log-probabilities.
    weighting: ``'renormalized'`` (Gemma 3) or ``'unbiased'`` (``'sampled'``).
    mode: ``'renormalize'`` (raw logits) or ``'remainder'`` (``'topk'``).
    values_dtype: dtype of the values / weights: ``'float32'``, ``'float16'``, ``'bfloat16'``.
    tokenizer: what identifies the tokenizer (e.g. its file's SHA-256, or ``'bytes'``).
    teacher_config: what identifies the teacher besides its variables (model, arguments).
    batch_size: rows per teacher forward.
    chunk_size: rows per resumable unit (rounded up to a multiple of ``batch_size``; default
      ``4 * batch_size``); resuming needs the same.
    on_stale: ``'rebuild'`` or ``'error'``.
    on_chunk: called as ``on_chunk(units_done, units)`` after each unit written.

  Returns:
    The :class:`TokenCache`.

  Raises:
    TokenCacheStale: a stale cache with ``on_stale='error'``.
    TeacherCacheError: bad arguments, values that do not fit ``values_dtype``, a corrupt cache
      with ``on_stale='error'``.
  """
  directory = os.fspath(directory)
  vocab = int(jax.eval_shape(
      lambda p, s, x: teacher.apply(p, s, x, train=False, rng=None)[0].logits,
      teacher.params, teacher.model_state,
      jax.tree.map(lambda a: np.asarray(a)[:1], inputs)).shape[-1])
  _check_args(inputs, targets, k, vocab, seed, temperature, weighting, mode, values_dtype,
              batch_size, chunk_size, on_stale)
  if targets == "topk" and mode == "renormalize":
    temperature = 1.0  # Raw logits serve every temperature.
  wanted = _identity(teacher, teacher_config, tokenizer, inputs, targets, k, seed, temperature,
                     weighting, mode, values_dtype)
  n, length = jax.tree.leaves(inputs)[0].shape[:2]
  batch_size = max(1, min(int(batch_size), n))
  chunk_size = -(-int(chunk_size or 4 * batch_size) // batch_size) * batch_size
  shape = [int(n), int(length), int(k)]

  meta = _read_json(os.path.join(directory, _META))
  recorded = meta if meta is not None else _read_json(os.path.join(directory, _BUILDING))
  if recorded is not None:
    differences = _differences(recorded, wanted)
    if not differences and meta is not None and meta.get("complete"):
      try:
        return load_token_cache(directory)
      except TeacherCacheCorrupt as corrupt:
        if on_stale == "error":
          raise
        logging.warning("%s; rebuilding it", corrupt)
    elif differences:
      what = describe_differences(differences)
      if on_stale == "error":
        raise TokenCacheStale(
            f"the teacher cache in {directory} is stale, built for another {what}; remove it, "
            "use another directory or pass on_stale='rebuild'", differences)
      logging.warning("teacher cache in %s is stale (%s); rebuilding it", directory, what)
  layout = {**wanted, "chunk_size": chunk_size, "batch_size": batch_size, "shape": shape}
  os.makedirs(directory, exist_ok=True)
  if meta is not None or _read_json(os.path.join(directory, _BUILDING)) != layout:
    _wipe(directory)  # A stale or finished cache, or units of another layout: start afresh.
  units_dir = os.path.join(directory, _UNITS)
  os.makedirs(units_dir, exist_ok=True)
  _write_json(os.path.join(directory, _BUILDING), layout)

  run = _targets_fn(teacher.apply, targets, int(k), float(temperature), weighting, mode)
  base_key = jax.random.key(int(seed))
  value_dtype = VALUE_DTYPES[values_dtype]
  idx_dtype = np.dtype(index_dtype(vocab))
  (first, _), (second, _) = _ARRAYS[targets]
  units = -(-n // chunk_size)
  for u in range(units):
    last = os.path.join(units_dir, f"{u:07d}.{second}.npy")
    if os.path.exists(last):  # Written last: the unit is complete.
      continue
    lo, hi = u * chunk_size, min(n, (u + 1) * chunk_size)
    values, indices = [], []
    for start in range(lo, hi, batch_size):
      rows = np.arange(start, start + batch_size)
      real = int(np.sum(rows < hi))
      rows = np.minimum(rows, hi - 1)  # One compiled shape: pad with copies of the last row.
      batch = jax.tree.map(lambda a, r=rows: jnp.asarray(np.asarray(a)[r]), inputs)
      keys = jax.vmap(lambda r: jax.random.fold_in(base_key, r))(jnp.asarray(rows, jnp.uint32))
      v, i = run(teacher.params, teacher.model_state, batch, keys)
      values.append(np.asarray(v)[:real])
      indices.append(np.asarray(i)[:real])
    cast = np.concatenate(values).astype(value_dtype)
    if not np.isfinite(cast.astype(np.float32)).all():
      raise TeacherCacheError(f"the teacher's values do not fit {values_dtype}; use "
                              "values_dtype='float32'")
    _save_npy(os.path.join(units_dir, f"{u:07d}.{first}.npy"), cast)
    _save_npy(last, np.concatenate(indices).astype(idx_dtype))
    if on_chunk is not None:
      on_chunk(u + 1, units)
  _assemble(directory, layout, units, value_dtype, idx_dtype)
  return load_token_cache(directory)


def _assemble(directory, layout, units, value_dtype, idx_dtype):
  targets, shape, chunk = layout["targets"], tuple(layout["shape"]), layout["chunk_size"]
  units_dir = os.path.join(directory, _UNITS)
  checksums = {}
  for (stem, _), dtype in zip(_ARRAYS[targets], (value_dtype, idx_dtype)):
    disk = np.dtype(np.uint16) if layout["values_dtype"] == "bfloat16" and stem != "indices" \
        else np.dtype(dtype)
    tmp = os.path.join(directory, f"{stem}.tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=disk, shape=shape)
    for u in range(units):
      out[u * chunk:(u + 1) * chunk] = np.load(os.path.join(units_dir, f"{u:07d}.{stem}.npy"))
    out.flush()
    checksums[stem] = _crc(out)
    del out
    os.replace(tmp, os.path.join(directory, f"{stem}.npy"))
  meta = {**{k: v for k, v in layout.items() if k != "batch_size"}, "complete": True,
          "checksums": checksums}
  _write_json(os.path.join(directory, _META), meta)
  shutil.rmtree(units_dir, ignore_errors=True)
  os.remove(os.path.join(directory, _BUILDING))


def _crc(array: np.ndarray) -> str:
  return f"{zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)):08x}"


def _wipe(directory: str) -> None:
  """Removes what a token cache writes in ``directory`` (nothing else)."""
  for name in (_META, _BUILDING, "values.npy", "indices.npy", "weights.npy"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      os.remove(path)
  shutil.rmtree(os.path.join(directory, _UNITS), ignore_errors=True)


def load_token_cache(directory: str | os.PathLike) -> TokenCache:
  """Opens a complete token cache written by :func:`build_token_cache` and checks it (format,
  shapes, dtypes and checksums).

  Raises:
    TeacherCacheCorrupt: an array does not match its checksum (the file changed on disk).
    TeacherCacheError: no complete cache, or one of another format.
  """
  directory = os.fspath(directory)
  meta = _read_json(os.path.join(directory, _META))
  if meta is None or not meta.get("complete"):
    raise TeacherCacheError(f"{directory} holds no complete token cache; build it with "
                            "build_token_cache (an interrupted build resumes)")
  if meta.get("format") != _FORMAT or meta.get("targets") not in TARGETS:
    raise TeacherCacheError(f"{directory} holds a cache of format {meta.get('format')!r}, this "
                            f"kdjax reads {_FORMAT!r}; remove it and build it again")
  arrays = {}
  for stem, key in _ARRAYS[meta["targets"]]:
    try:
      raw = np.load(os.path.join(directory, f"{stem}.npy"), mmap_mode="r")
    except (OSError, ValueError) as e:
      raise TeacherCacheError(f"the token cache in {directory} is unreadable ({e}); remove it "
                              "and build it again") from None
    if list(raw.shape) != list(meta["shape"]):
      raise TeacherCacheError(f"the token cache in {directory} has {stem} of shape "
                              f"{list(raw.shape)}, expected {meta['shape']}; remove it and build "
                              "it again")
    if _crc(raw) != meta["checksums"].get(stem):
      raise TeacherCacheCorrupt(
          f"the token cache in {directory} is corrupt: {stem}.npy does not match its checksum, "
          "so the file was modified or damaged after it was built; remove the cache and build it "
          "again (a run rebuilds it by itself)")
    arrays[key] = _from_disk(raw, meta["values_dtype"]) if stem != "indices" else raw
  return TokenCache(directory, arrays, meta)

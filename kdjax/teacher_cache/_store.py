"""The teacher cache on disk: its format, its identity (fingerprint) and a checked, opened cache.

A cache directory holds ``meta.json`` (settings, fingerprint, ``complete``, ``checksums``),
``values.npy`` and (top-k caches) ``indices.npy``, arrays of shape
``[replay_epochs, num_examples, k]``; while a build runs, ``building.json`` and ``units/`` hold
its finished units.

Checksums: a CRC-32 of every part of the arrays (one replay epoch's rows of one unit of
``chunk_size`` examples) is stored in ``meta.json`` when the cache is assembled, and every part
is checked when the cache is opened (:func:`load_teacher_cache`), so a file overwritten or
damaged on disk is never used: opening it raises :class:`TeacherCacheCorrupt` naming the part,
and :func:`~kdjax.teacher_cache.build_teacher_cache` rebuilds it. The check reads the arrays once
(``benchmarks/teacher_cache_verify.py`` measures it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from typing import Any, Mapping

import jax
import ml_dtypes
import numpy as np

from kdjax import objectives
from kdjax.teacher_cache._iterator import CachedIterator

REPLAY_KEY = "replay_epoch"
INDEX_KEY = "index"

_FORMAT_VERSION = 2  # 2: per-part checksums in meta.json.
_META = "meta.json"
_BUILDING = "building.json"
_UNITS = "units"
_VALUES = "values.npy"
_INDICES = "indices.npy"
# What build_teacher_cache accepts (the run layer's config checks read these; the modes are
# kdjax.losses.SPARSE_MODES).
VALUE_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
ON_STALE = ("rebuild", "error")


def index_dtype(num_classes: int) -> str:
  """The dtype of a top-k cache's class indices: int16 up to 32768 classes, else int32."""
  return "int16" if num_classes <= 2**15 else "int32"


class TeacherCacheError(ValueError):
  """A teacher cache that cannot be used: stale, incomplete, corrupt or mismatched."""


class TeacherCacheCorrupt(TeacherCacheError):
  """A complete cache whose arrays do not match their checksums (modified or damaged on disk)."""


# Identity ----------------------------------------------------------------------------------------


def _host_array(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def teacher_fingerprint(params: Any, model_state: Any, config: Mapping[str, Any]) -> str:
  """A SHA-256 of the teacher's variables and of ``config`` (JSON-serialisable).

  Every leaf's tree path, dtype, shape and bytes enter the hash, so retraining, reloading another
  checkpoint or changing one weight gives another fingerprint.

  Args:
    params, model_state: the teacher's variables (pytrees of arrays).
    config: the settings that fix the cached values: teacher model and arguments, the views'
      settings, ``k``, dtype, mode...

  Returns:
    A hex string of 64 characters.
  """
  h = hashlib.sha256()
  h.update(json.dumps(config, sort_keys=True, default=str).encode())
  for name, tree in (("params", params), ("model_state", model_state)):
    _hash_tree(h, tree, prefix=name)
  return h.hexdigest()


def _hash_tree(h: Any, tree: Any, *, prefix: str = "") -> None:
  """Feeds every leaf of ``tree`` to the hash ``h``: its path (after ``prefix``), dtype, shape
  and bytes."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(_host_array(leaf))
    h.update(f"{prefix}{jax.tree_util.keystr(path)}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())


# The cache --------------------------------------------------------------------------------------


class CachedTeacher:
  """A complete, checked teacher cache, memory-mapped from its directory.

  Attributes:
    directory: where it lives.
    values: ``[E, N, k]`` (float16 / bfloat16 / float32): raw teacher logits
      (``mode='renormalize'``) or teacher log-probabilities at ``temperature``
      (``mode='remainder'``); in decreasing order for a top-k cache, in class order for a full one.
    indices: ``[E, N, k]`` int16 / int32 class indices of ``values``; ``None`` for a full cache
      (``values`` holds every class, in order).
    meta: the cache's metadata (fingerprint, settings, shapes).
  """

  def __init__(self, directory: str, values: np.ndarray, indices: np.ndarray | None,
               meta: Mapping[str, Any]):
    self.directory = directory
    self.values = values
    self.indices = indices
    self.meta = dict(meta)
    self._full_indices = None
    if indices is None:
      self._full_indices = np.arange(self.k, dtype=np.dtype(meta["indices_dtype"]))

  replay_epochs = property(lambda self: int(self.meta["replay_epochs"]))
  num_examples = property(lambda self: int(self.meta["num_examples"]))
  num_classes = property(lambda self: int(self.meta["num_classes"]))
  k = property(lambda self: int(self.meta["k"]))
  mode = property(lambda self: str(self.meta["mode"]))
  temperature = property(lambda self: float(self.meta["temperature"]))
  fingerprint = property(lambda self: str(self.meta["fingerprint"]))
  full = property(lambda self: self.indices is None)

  def lookup(self, index: np.ndarray, replay_epoch: np.ndarray) -> dict[str, np.ndarray]:
    """The cached values and indices of examples ``index`` in replay epochs ``replay_epoch``.

    Args:
      index: int ``[b]`` example indices in the split.
      replay_epoch: int ``[b]`` replay epochs, in ``[0, E)``.

    Returns:
      ``{objectives.TOPK_VALUES_KEY: [b, k], objectives.TOPK_INDICES_KEY: [b, k]}``.
    """
    index = np.asarray(index)
    replay = np.broadcast_to(np.asarray(replay_epoch), index.shape)
    if index.size and (index.min() < 0 or index.max() >= self.num_examples):
      raise TeacherCacheError(f"example indices must be in [0, {self.num_examples}) for this "
                              f"cache, got [{index.min()}, {index.max()}]")
    if replay.size and (replay.min() < 0 or replay.max() >= self.replay_epochs):
      raise TeacherCacheError(f"replay epochs must be in [0, {self.replay_epochs}) for this "
                              f"cache, got [{replay.min()}, {replay.max()}]")
    values = np.asarray(self.values[replay, index])
    if self.indices is None:
      indices = np.broadcast_to(self._full_indices, values.shape)
    else:
      indices = np.asarray(self.indices[replay, index])
    return {objectives.TOPK_VALUES_KEY: values, objectives.TOPK_INDICES_KEY: indices}

  def attach(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` plus the cached values/indices of its rows (read from ``'index'`` and
    ``'replay_epoch'``, as the training iterator gives them under ``replay_epochs``)."""
    missing = [key for key in (INDEX_KEY, REPLAY_KEY) if key not in batch]
    if missing:
      raise TeacherCacheError(
          f"the batch has no {missing} entries (it has {sorted(batch)}); make the training "
          f"iterator with replay_epochs={self.replay_epochs} so batches carry the keys of their "
          "cached views")
    return {**batch, **self.lookup(batch[INDEX_KEY], batch[REPLAY_KEY])}

  def check_views(self, settings: Mapping[str, Any]) -> None:
    """Raises unless ``settings`` (``ReplayViews.settings``) are the ones the cache was built on."""
    mine = self.meta["views"]
    diff = sorted(k for k in set(mine) | set(settings) if mine.get(k) != settings.get(k))
    if diff:
      detail = ", ".join(f"{k}: cache {mine.get(k)!r} vs data {settings.get(k)!r}" for k in diff)
      raise TeacherCacheError(
          f"the teacher cache in {self.directory} was built on other views ({detail}); make the "
          "training iterator with the settings of the cache or rebuild the cache with "
          "build_teacher_cache")

  def wrap(self, iterator: Any) -> CachedIterator:
    """The training iterator with the cached teacher outputs attached to every batch.

    Args:
      iterator: a :class:`kdjax.data.TrainIterator` made with ``replay_epochs`` and the same
        dataset, split, seed, augmentation and standardisation as the cache.
    """
    if getattr(iterator, "replay", None) is None:
      raise TeacherCacheError(
          "the training iterator has no augmentation replay; make it with "
          f"make_train_iterator(..., replay_epochs={self.replay_epochs}) so the student sees the "
          "views whose teacher outputs are cached")
    self.check_views(iterator.replay.settings)
    return CachedIterator(iterator, self)

  def term(self, *, temperature: float, mask_key: str | None = "mask") -> objectives.Term:
    """The :func:`kdjax.objectives.cached_kd` term for this cache (checks the temperature of a remainder cache)."""
    if self.mode == "remainder" and temperature != self.temperature:
      raise TeacherCacheError(
          f"this cache holds log-probabilities at temperature {self.temperature}; use that "
          f"temperature or rebuild the cache with temperature={temperature} (or "
          "mode='renormalize', which works at any temperature)")
    return objectives.cached_kd(temperature=temperature, mode=self.mode, mask_key=mask_key)


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _write_json(path: str, obj: Mapping[str, Any]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _save_npy(path: str, array: np.ndarray) -> None:
  tmp = f"{path}.tmp{os.getpid()}.npy"
  np.save(tmp, _to_disk(array))
  os.replace(tmp, path)


def _to_disk(array: np.ndarray) -> np.ndarray:
  # .npy has no bfloat16: it is stored as its uint16 bit pattern and viewed back on load.
  return array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array


def _from_disk(array: np.ndarray, dtype: str) -> np.ndarray:
  return array.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else array


def part_checksum(part: np.ndarray) -> str:
  """The CRC-32 of an array part's bytes as stored on disk (hex)."""
  raw = np.ascontiguousarray(part)
  return f"{zlib.crc32(raw.reshape(-1).view(np.uint8)):08x}"


def _parts(meta: Mapping[str, Any]):
  """``(replay_epoch, lo, hi)`` of every checksummed part, in the order of ``checksums``."""
  n, chunk = int(meta["num_examples"]), int(meta["checksums"]["chunk_size"])
  for r in range(int(meta["replay_epochs"])):
    for lo in range(0, n, chunk):
      yield r, lo, min(n, lo + chunk)


def _verify(directory: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
  """Raises :class:`TeacherCacheCorrupt` unless every part matches its stored checksum."""
  sums = meta.get("checksums")
  if not isinstance(sums, Mapping):
    raise TeacherCacheCorrupt(f"the teacher cache in {directory} has no checksums; remove it and "
                              "build it again")
  parts = list(_parts(meta))
  for kind, array in arrays.items():
    expected = sums.get(kind) or []
    if len(expected) != len(parts):
      raise TeacherCacheCorrupt(f"the teacher cache in {directory} has {len(expected)} {kind} "
                                f"checksums for {len(parts)} parts; remove it and build it again")
    bad = [(r, lo, hi) for (r, lo, hi), want in zip(parts, expected)
           if part_checksum(array[r, lo:hi]) != want]
    if bad:
      r, lo, hi = bad[0]
      raise TeacherCacheCorrupt(
          f"the teacher cache in {directory} is corrupt: {kind}.npy, replay epoch {r}, examples "
          f"{lo}..{hi - 1} (and {len(bad) - 1} more of {len(parts)} parts) do not match their "
          "checksums, so the file was modified or damaged after it was built; remove the cache "
          "and build it again (a run rebuilds it by itself)")


def _wipe(directory: str) -> None:
  """Removes what a teacher cache writes in ``directory`` (nothing else)."""
  for name in (_META, _BUILDING, _VALUES, _INDICES):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      os.remove(path)
  shutil.rmtree(os.path.join(directory, _UNITS), ignore_errors=True)


def load_teacher_cache(directory: str | os.PathLike, *,
                       fingerprint: str | None = None) -> CachedTeacher:
  """Opens a complete cache written by :func:`build_teacher_cache` and checks it.

  Checks the format, that it is complete, the arrays' shapes (``[E, N, k]``) and dtypes against
  its metadata, (given ``fingerprint``) that it belongs to that teacher and settings, and every
  part of the arrays against its checksum.

  Raises:
    TeacherCacheCorrupt: a part does not match its checksum (the file changed on disk).
    TeacherCacheError: naming what is wrong and the fix.
  """
  directory = os.fspath(directory)
  meta = _read_json(os.path.join(directory, _META))
  if meta is None or not meta.get("complete"):
    raise TeacherCacheError(f"{directory} holds no complete teacher cache; build it with "
                            "build_teacher_cache (an interrupted build resumes)")
  if meta.get("format") != _FORMAT_VERSION:
    raise TeacherCacheError(f"{directory} holds a teacher cache of format {meta.get('format')}, "
                            f"this kdjax reads format {_FORMAT_VERSION}; rebuild it")
  if fingerprint is not None and meta.get("fingerprint") != fingerprint:
    raise TeacherCacheError(
        f"the teacher cache in {directory} belongs to another teacher or other settings "
        f"(fingerprint {str(meta.get('fingerprint'))[:12]}..., expected {fingerprint[:12]}...); "
        "rebuild it with build_teacher_cache")
  shape = (meta["replay_epochs"], meta["num_examples"], meta["k"])
  try:
    values = _from_disk(np.load(os.path.join(directory, _VALUES), mmap_mode="r"),
                        meta["values_dtype"])
    indices = None
    if not meta["full"]:
      indices = np.load(os.path.join(directory, _INDICES), mmap_mode="r")
  except (OSError, ValueError) as e:
    raise TeacherCacheError(f"the teacher cache in {directory} is unreadable ({e}); remove it "
                            "and build it again") from None
  problems = []
  if values.shape != shape or values.dtype != VALUE_DTYPES[meta["values_dtype"]]:
    problems.append(f"values are {values.dtype}{list(values.shape)}, expected "
                    f"{meta['values_dtype']}{list(shape)}")
  if indices is not None and (indices.shape != shape or indices.dtype != meta["indices_dtype"]):
    problems.append(f"indices are {indices.dtype}{list(indices.shape)}, expected "
                    f"{meta['indices_dtype']}{list(shape)}")
  if problems:
    raise TeacherCacheError(f"the teacher cache in {directory} does not match its metadata "
                            f"({'; '.join(problems)}); remove it and build it again")
  on_disk = {"values": _to_disk(values)}
  if indices is not None:
    on_disk["indices"] = indices
  _verify(directory, meta, on_disk)
  return CachedTeacher(directory, values, indices, meta)

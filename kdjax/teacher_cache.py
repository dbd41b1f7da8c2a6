"""Offline teacher: its outputs on every replayed training view, computed once, read from disk.

For an image pair like resnet32x4 -> resnet8x4 the teacher's forward pass costs about twice the
student's forward and backward together, and the teacher never changes. With augmentation replay
(``kdjax.data.make_train_iterator(..., replay_epochs=E)``) the view of example ``i`` in epoch
``e`` is a function of ``(seed, e mod E, i)``, so the teacher's outputs on all ``E x N`` views can
be computed once, in large jitted batches over the local devices, and stored:

1. :func:`build_teacher_cache` writes (or resumes, or reuses) a cache directory: per replay epoch
   and example, the teacher's top-``k`` logits (values float16 / bfloat16 / float32, indices
   int16 or int32), or all of its logits. The work is cut into units of ``chunk_size`` examples
   of one replay epoch; each process computes the units ``u`` with ``u % process_count ==
   process_index`` and writes each one atomically, so a build killed halfway continues where it
   stopped, with any process count. The cache is identified by a fingerprint of the teacher's
   parameters and the settings that fix the views and values (:func:`teacher_fingerprint`); a
   cache with another fingerprint is rebuilt (or refused), never used.
2. :meth:`CachedTeacher.wrap` wraps the training iterator: each batch gets the cached
   ``'teacher_topk_values'`` / ``'teacher_topk_indices'`` of its rows, looked up by
   ``('replay_epoch', 'index')``.
3. :func:`cached_kd` (config kind ``'cached_kd'``) is the KD term that reads them: the sparse KD
   of :func:`kdjax.lm.cached_sparse_kd_term`, exact Hinton KD when all logits are cached. The
   state then has no teacher (``DistillState.create(teacher=None, ...)``) and the step runs no
   teacher forward.

Terms that read teacher *features* (FitNets, AT, CRD, ...) still need the online teacher;
:func:`check_objective` names them.

Example::

  views = kdjax.data.make_replay_views('cifar100', seed=0, replay_epochs=8, augment=augment)
  cache = teacher_cache.build_teacher_cache(workdir + '/teacher_cache', teacher, views, k=10)
  it = cache.wrap(kdjax.data.make_train_iterator('cifar100', global_batch_size=64, seed=0,
                                                 augment=augment, replay_epochs=8))
  objective = objectives.combine({'ce': (objectives.cross_entropy(), 0.1),
                                  'kd': (teacher_cache.cached_kd(temperature=4.0), 0.9)})
  state = kdjax.DistillState.create(student=student, teacher=None, objective=objective, ...)
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_dtypes
import numpy as np

from kdjax import losses
from kdjax import objectives
from kdjax.data import ReplayViews
from kdjax.data import TrainIterator
from kdjax.lm import TOPK_INDICES_KEY
from kdjax.lm import TOPK_VALUES_KEY
from kdjax.lm._terms import SPARSE_MODES
from kdjax.lm import cached_sparse_kd_term
from kdjax.models import Model

VALUES_KEY = TOPK_VALUES_KEY
INDICES_KEY = TOPK_INDICES_KEY
REPLAY_KEY = "replay_epoch"
INDEX_KEY = "index"
# Config kinds whose terms never read the teacher's outputs: they run on a cache.
TEACHER_FREE_KINDS = ("cross_entropy", "cached_kd")

_FORMAT_VERSION = 1
_META = "meta.json"
_BUILDING = "building.json"
_UNITS = "units"
_VALUES = "values.npy"
_INDICES = "indices.npy"
# What build_teacher_cache accepts (the run layer's config checks read these).
VALUE_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
MODES = SPARSE_MODES
ON_STALE = ("rebuild", "error")


def index_dtype(num_classes: int) -> str:
  """The dtype of a top-k cache's class indices: int16 up to 32768 classes, else int32."""
  return "int16" if num_classes <= 2**15 else "int32"


class TeacherCacheError(ValueError):
  """A teacher cache that cannot be used: stale, incomplete, corrupt or mismatched."""


# Identity ---------------------------------------------------------------------------------------


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
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in leaves:
      a = np.ascontiguousarray(_host_array(leaf))
      h.update(f"{name}{jax.tree_util.keystr(path)}:{a.dtype.str}:{a.shape};".encode())
      h.update(a.tobytes())
  return h.hexdigest()


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
      ``{VALUES_KEY: [b, k], INDICES_KEY: [b, k]}``.
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
    return {VALUES_KEY: values, INDICES_KEY: indices}

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

  def wrap(self, iterator: TrainIterator) -> "CachedIterator":
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
    """The :func:`cached_kd` term for this cache (checks the temperature of a remainder cache)."""
    if self.mode == "remainder" and temperature != self.temperature:
      raise TeacherCacheError(
          f"this cache holds log-probabilities at temperature {self.temperature}; use that "
          f"temperature or rebuild the cache with temperature={temperature} (or "
          "mode='renormalize', which works at any temperature)")
    return cached_kd(temperature=temperature, mode=self.mode, mask_key=mask_key)


class CachedIterator(Iterator[dict]):
  """A :class:`kdjax.data.TrainIterator` whose batches carry the cached teacher outputs.

  ``get_state`` / ``set_state`` / ``close`` and the iterator's attributes pass through, so it
  drops in where the plain iterator was used (checkpointing the data position included).
  """

  def __init__(self, iterator: TrainIterator, cache: CachedTeacher):
    self.iterator = iterator
    self.cache = cache

  def __iter__(self) -> "CachedIterator":
    return self

  def __next__(self) -> dict:
    return self.cache.attach(next(self.iterator))

  def get_state(self) -> dict[str, Any]:
    return self.iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.iterator.set_state(state)

  def close(self) -> None:
    self.iterator.close()

  def __enter__(self) -> "CachedIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getattr__(self, name: str) -> Any:
    return getattr(self.iterator, name)


# Building ---------------------------------------------------------------------------------------


def _check_build_args(k, mode, temperature, values_dtype, batch_size, chunk_size, num_classes):
  if mode not in MODES:
    raise TeacherCacheError(f"mode must be one of {MODES}, got {mode!r}")
  if values_dtype not in VALUE_DTYPES:
    raise TeacherCacheError(f"values_dtype must be one of {sorted(VALUE_DTYPES)}, got "
                            f"{values_dtype!r}")
  if k is not None and (int(k) != k or not 1 <= k <= num_classes):
    raise TeacherCacheError(f"k must be None (all {num_classes} logits) or an int in "
                            f"[1, {num_classes}], got {k!r}")
  if not temperature > 0:
    raise TeacherCacheError(f"temperature must be > 0, got {temperature}")
  for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
    if value is not None and (int(value) != value or value < 1):
      raise TeacherCacheError(f"{name} must be a positive int, got {value!r}")


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


def _wipe(directory: str) -> None:
  """Removes what a teacher cache writes in ``directory`` (nothing else)."""
  for name in (_META, _BUILDING, _VALUES, _INDICES):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      os.remove(path)
  shutil.rmtree(os.path.join(directory, _UNITS), ignore_errors=True)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def load_teacher_cache(directory: str | os.PathLike, *,
                       fingerprint: str | None = None) -> CachedTeacher:
  """Opens a complete cache written by :func:`build_teacher_cache` and checks it.

  Checks the format, that it is complete, the arrays' shapes (``[E, N, k]``) and dtypes against
  its metadata, and (given ``fingerprint``) that it belongs to that teacher and settings.

  Raises:
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
  return CachedTeacher(directory, values, indices, meta)


@functools.lru_cache(maxsize=8)
def _topk_fn(apply, k, num_classes, mode, temperature, mesh):
  full = k is None or k == num_classes

  def topk(params, model_state, images):
    out, _ = apply(params, model_state, images, train=False, rng=None)
    logits = out.logits.astype(np.float32)
    if full:
      if mode == "remainder":
        logits = jax.nn.log_softmax(logits / temperature, axis=-1)
      return logits, None
    return losses.topk_teacher_logits(logits, int(k), log_probs=mode == "remainder",
                                      temperature=temperature)

  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P("data"))
  return jax.jit(topk, in_shardings=(replicated, replicated, rows), out_shardings=rows)


def build_teacher_cache(directory: str | os.PathLike,
                        teacher: Model,
                        views: ReplayViews,
                        *,
                        k: int | None = None,
                        mode: str = "renormalize",
                        temperature: float = 1.0,
                        values_dtype: str = "float16",
                        teacher_config: Mapping[str, Any] | None = None,
                        batch_size: int = 256,
                        chunk_size: int | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        on_stale: str = "rebuild",
                        on_chunk: Callable[[int, int], None] | None = None) -> CachedTeacher:
  """Builds, resumes or reuses the teacher cache in ``directory`` and returns it, checked.

  The teacher runs in inference mode on every view ``views(i, r)``, ``i < N``, ``r < E``, in
  jitted batches of ``batch_size`` sharded over this process's devices, and its outputs are
  stored as ``[E, N, k]`` arrays. In order:

  * a complete cache with this fingerprint is loaded and returned (nothing recomputed);
  * a cache with another fingerprint (another teacher, other views or settings) is stale: it is
    removed and rebuilt, with a warning (``on_stale='rebuild'``), or refused
    (``on_stale='error'``);
  * otherwise the missing units are computed (a unit is ``chunk_size`` examples of one replay
    epoch; process ``p`` of ``P`` computes units ``u % P == p``), each written atomically, so an
    interrupted build resumes where it stopped; then process 0 assembles the arrays.

  Args:
    directory: the cache's directory (created if needed), e.g. ``WORKDIR/teacher_cache``. Only the
      files the cache writes are ever removed from it.
    teacher: the trained teacher (:class:`kdjax.models.Model`).
    views: :func:`kdjax.data.make_replay_views` with the training stream's settings.
    k: keep the top-``k`` logits per view; ``None`` keeps all of them (in class order, no
      indices stored).
    mode: ``'renormalize'`` stores raw logits (the cached term then works at any temperature);
      ``'remainder'`` stores log-probabilities at ``temperature`` (see
      :func:`kdjax.losses.sparse_kd`).
    temperature: the temperature of ``'remainder'`` values (ignored for ``'renormalize'``).
    values_dtype: ``'float16'`` (default; 11-bit mantissa), ``'bfloat16'`` or ``'float32'``.
    teacher_config: what identifies the teacher besides its variables (model name, arguments,
      dtype); enters the fingerprint.
    batch_size: examples per teacher forward, over this process's devices (rounded up to a
      multiple of the local device count).
    chunk_size: examples per unit of work (default ``8 * batch_size``); resuming needs the same.
    process_index, process_count: this process and the number of processes (default: JAX's).
    on_stale: ``'rebuild'`` or ``'error'``.
    on_chunk: called as ``on_chunk(units_done_here, units_of_this_process)`` after each unit this
      process writes (progress reporting).

  Returns:
    The :class:`CachedTeacher`.

  Raises:
    TeacherCacheError: bad arguments, a stale cache with ``on_stale='error'``, values that do not
      fit ``values_dtype``.
  """
  directory = os.fspath(directory)
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if on_stale not in ON_STALE:
    raise TeacherCacheError(f"on_stale must be 'rebuild' or 'error', got {on_stale!r}")
  if not isinstance(views, ReplayViews):
    raise TeacherCacheError("views must be a kdjax.data.ReplayViews; make it with "
                            "kdjax.data.make_replay_views(...) with the training settings")
  example = views(np.zeros((1,), np.int64), np.zeros((1,), np.int64))["image"]
  out_shape = jax.eval_shape(
      lambda p, s, x: teacher.apply(p, s, x, train=False, rng=None)[0].logits,
      teacher.params, teacher.model_state, example)
  num_classes = int(out_shape.shape[-1])
  _check_build_args(k, mode, temperature, values_dtype, batch_size, chunk_size, num_classes)
  full = k is None or k == num_classes
  k = num_classes if full else int(k)
  if mode == "renormalize":
    temperature = 1.0
  n, e = views.num_examples, views.replay_epochs
  settings = {
      "format": _FORMAT_VERSION, "teacher": dict(teacher_config or {"name": teacher.name}),
      "views": views.settings, "num_examples": n, "replay_epochs": e, "num_classes": num_classes,
      "k": k, "full": full, "mode": mode, "temperature": float(temperature),
      "values_dtype": values_dtype, "indices_dtype": index_dtype(num_classes),
  }
  fingerprint = teacher_fingerprint(teacher.params, teacher.model_state, settings)

  meta = _read_json(os.path.join(directory, _META))
  if meta is not None:
    if meta.get("fingerprint") == fingerprint and meta.get("complete"):
      return load_teacher_cache(directory, fingerprint=fingerprint)
    stale = meta.get("fingerprint") != fingerprint
    if stale and on_stale == "error":
      raise TeacherCacheError(
          f"the teacher cache in {directory} was built for another teacher or other settings; "
          "remove it, use another directory, or pass on_stale='rebuild'")
    if process_index == 0:
      logging.warning("teacher cache in %s is stale (built for another teacher or other "
                      "settings); rebuilding it", directory)

  local = jax.local_device_count()
  batch_size = -(-int(batch_size) // local) * local
  chunk_size = int(chunk_size or 8 * batch_size)
  n_chunks = -(-n // chunk_size)
  layout = {"fingerprint": fingerprint, "chunk_size": chunk_size}
  units_dir = os.path.join(directory, _UNITS)
  if process_index == 0:
    os.makedirs(directory, exist_ok=True)
    building = _read_json(os.path.join(directory, _BUILDING))
    if meta is not None or building != layout:
      _wipe(directory)  # A stale cache, or units of another build: start afresh.
    os.makedirs(units_dir, exist_ok=True)
    _write_json(os.path.join(directory, _BUILDING), layout)
  _barrier("kdjax_teacher_cache_start")
  os.makedirs(units_dir, exist_ok=True)

  mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
  topk = _topk_fn(teacher.apply, None if full else k, num_classes, mode, float(temperature),
                  mesh)
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(teacher.params, replicated)
  model_state = jax.device_put(teacher.model_state, replicated)
  value_dtype = VALUE_DTYPES[values_dtype]
  mine = [u for u in range(e * n_chunks) if u % process_count == process_index]
  done = 0
  for u in mine:
    values_path = os.path.join(units_dir, f"{u:07d}.values.npy")
    if os.path.exists(values_path):  # Written last: the unit is complete.
      done += 1
      continue
    r, c = divmod(u, n_chunks)
    lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
    values, indices = _run_unit(topk, params, model_state, views, r, lo, hi, batch_size,
                                NamedSharding(mesh, P("data")))
    cast = values.astype(value_dtype)
    if not np.isfinite(cast.astype(np.float32)).all():
      raise TeacherCacheError(
          f"the teacher's values do not fit {values_dtype} (|max| = "
          f"{np.abs(values).max():.4g}); use values_dtype='bfloat16' or 'float32'")
    if indices is not None:
      _save_npy(os.path.join(units_dir, f"{u:07d}.indices.npy"),
                indices.astype(settings["indices_dtype"]))
    _save_npy(values_path, cast)
    done += 1
    if on_chunk is not None:
      on_chunk(done, len(mine))
  _barrier("kdjax_teacher_cache_units")

  if process_index == 0:
    _assemble(directory, settings, fingerprint, e, n, k, n_chunks, chunk_size, full)
  _barrier("kdjax_teacher_cache_done")
  return load_teacher_cache(directory, fingerprint=fingerprint)


def _run_unit(topk, params, model_state, views, replay, lo, hi, batch_size, rows_sharding):
  """The teacher's outputs on views ``[lo, hi)`` of replay epoch ``replay``."""
  values, indices, pending = [], [], None

  def collect(item):
    out, real = item
    v, i = out
    values.append(np.asarray(v)[:real])
    if i is not None:
      indices.append(np.asarray(i)[:real])

  for start in range(lo, hi, batch_size):
    idx = np.arange(start, min(hi, start + batch_size))
    real = len(idx)
    images = views(idx, np.full((real,), replay))["image"]
    if real < batch_size:  # One compiled shape: pad with copies of the last view.
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - real, axis=0)])
    out = topk(params, model_state, jax.device_put(images, rows_sharding))
    if pending is not None:  # Loading the next views overlaps the running forward pass.
      collect(pending)
    pending = (out, real)
  collect(pending)
  return np.concatenate(values), (np.concatenate(indices) if indices else None)


def _assemble(directory, settings, fingerprint, e, n, k, n_chunks, chunk_size, full):
  units_dir = os.path.join(directory, _UNITS)
  missing = [u for u in range(e * n_chunks)
             if not os.path.exists(os.path.join(units_dir, f"{u:07d}.values.npy"))]
  if missing:
    raise TeacherCacheError(
        f"{len(missing)} of {e * n_chunks} units of the teacher cache in {directory} are missing "
        f"(e.g. unit {missing[0]}); run build_teacher_cache on every process (it resumes)")
  shape = (e, n, k)
  disk_dtype = np.uint16 if settings["values_dtype"] == "bfloat16" else VALUE_DTYPES[
      settings["values_dtype"]]
  targets = [(_VALUES, "values", disk_dtype)]
  if not full:
    targets.append((_INDICES, "indices", np.dtype(settings["indices_dtype"])))
  for filename, kind, dtype in targets:
    tmp = os.path.join(directory, f"{filename}.tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for u in range(e * n_chunks):
      r, c = divmod(u, n_chunks)
      lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
      out[r, lo:hi] = np.load(os.path.join(units_dir, f"{u:07d}.{kind}.npy"))
    out.flush()
    del out
    os.replace(tmp, os.path.join(directory, filename))
  _write_json(os.path.join(directory, _META),
              {**settings, "fingerprint": fingerprint, "complete": True})
  shutil.rmtree(units_dir, ignore_errors=True)
  os.remove(os.path.join(directory, _BUILDING))


# The term and the objective check ---------------------------------------------------------------


def cached_kd(*, temperature: float = 4.0, mode: str = "renormalize",
              values_key: str = VALUES_KEY, indices_key: str = INDICES_KEY,
              mask_key: str | None = "mask") -> objectives.Term:
  r"""KD against teacher outputs read from the batch (a teacher cache): no teacher forward.

  The loss of :func:`kdjax.lm.cached_sparse_kd_term` (:func:`kdjax.losses.sparse_kd`) on
  per-example logits ``[B, C]``: with ``q = softmax(v / T)`` over the cached classes ``I``,

  .. math::
    \ell = T^2 \sum_{i \in I} q_i (\log q_i - \log \mathrm{softmax}(z_s / T)_i)

  averaged over the examples (``batch[mask_key]`` marks the real ones). With every logit cached
  (``k = C``) it is Hinton KD, :func:`kdjax.objectives.kd`, exactly.

  Args:
    temperature: ``T > 0``; a ``'remainder'`` cache only at the temperature it was built with.
    mode: the cache's mode (``'renormalize'``: raw logits; ``'remainder'``: log-probabilities,
      the mass outside the top-k matched as one more bucket).
    values_key, indices_key: the batch keys :meth:`CachedTeacher.attach` writes.
    mask_key: batch key of the per-example validity mask.

  Returns:
    A :class:`~kdjax.objectives.Term` whose ``needs.batch`` names the two cache keys.

  References:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015;
    Z. Shen, E. Xing, "A Fast Knowledge Distillation Framework for Visual Recognition" (FKD,
    stored soft labels per augmented view), 2022.
  """
  term = cached_sparse_kd_term(mode=mode, temperature=temperature, values_key=values_key,
                               indices_key=indices_key, mask_key=mask_key)
  return term._replace(needs=objectives.Needs(batch=(values_key, indices_key)))


objectives.register("cached_kd", cached_kd)


def check_objective(objective: Mapping[str, Any]) -> None:
  """Raises unless every term of an objective can run on a teacher cache (no online teacher).

  Args:
    objective: ``config.objective`` (``{name: {'kind': ..., ...}}``, a dict or ConfigDict), or
      ``{name: Term | (Term, weight)}``. Config terms pass when their kind is one of
      ``TEACHER_FREE_KINDS``; :class:`~kdjax.objectives.Term` objects pass unless their
      ``needs.teacher`` names features (a term that reads the teacher's logits then fails at
      the first step with "there is no teacher").

  Raises:
    TeacherCacheError: naming each term that needs the online teacher, and why.
  """
  if hasattr(objective, "to_dict"):
    objective = objective.to_dict()
  bad = []
  for name, spec in objective.items():
    term = spec[0] if isinstance(spec, tuple) and not isinstance(spec, objectives.Term) else spec
    if isinstance(term, objectives.Term):
      if term.needs.teacher:
        bad.append(f"{name!r} (reads teacher features {list(term.needs.teacher)})")
      continue
    kind = term.get("kind") if isinstance(term, Mapping) else None
    if kind in TEACHER_FREE_KINDS:
      continue
    registered = objectives.term_kinds().get(kind)
    feats = ()
    if registered is not None:
      kwargs = {key: v for key, v in term.items() if key not in ("kind", "weight", "warmup_steps")}
      try:
        feats = registered.ctor(**kwargs).needs.teacher
      except Exception:  # pylint: disable=broad-except
        feats = ()  # Needs dataset arguments to build: its kind alone decides.
    why = f"reads teacher features {list(feats)}" if feats else "reads the teacher's outputs"
    bad.append(f"{name!r} (kind {kind!r}, {why})")
  if bad:
    raise TeacherCacheError(
        f"objective term(s) {', '.join(bad)} need the online teacher, which a teacher cache "
        "replaces: use kind 'cached_kd' for the KD term and drop feature terms, or turn the "
        "teacher cache off (the teacher then runs in every step)")

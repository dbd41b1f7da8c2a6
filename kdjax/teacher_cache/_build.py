"""Building a teacher cache: the teacher's outputs on every replayed view, in resumable units."""
from __future__ import annotations

import functools
import os
import shutil
from typing import Any, Callable, Mapping

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from kdjax import losses
from kdjax.data import ReplayViews
from kdjax.models import Model
from kdjax.teacher_cache._store import (_BUILDING, _INDICES, _META, _UNITS, _VALUES, ON_STALE,
                                        VALUE_DTYPES, CachedTeacher, TeacherCacheCorrupt,
                                        TeacherCacheError, part_checksum,
                                        _FORMAT_VERSION, _read_json, _save_npy, _wipe,
                                        _write_json, index_dtype, load_teacher_cache,
                                        teacher_fingerprint)


def _check_build_args(k, mode, temperature, values_dtype, batch_size, chunk_size, num_classes):
  if mode not in losses.SPARSE_MODES:
    raise TeacherCacheError(f"mode must be one of {losses.SPARSE_MODES}, got {mode!r}")
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


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


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
                        on_chunk: Callable[[int, int], None] | None = None,
                        input_key: str = "image") -> CachedTeacher:
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
    input_key: the entry of the views the teacher reads (``'image'``, or e.g.
      :data:`kdjax.data.DEGRADED_KEY`); another entry enters the fingerprint.

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
  example = views(np.zeros((1,), np.int64), np.zeros((1,), np.int64)).get(input_key)
  if example is None:
    raise TeacherCacheError(f"the views have no {input_key!r} entry for the teacher; set "
                            "input_key to one of the entries the training batches hold")
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
  if input_key != "image":  # Absent for the default: earlier caches keep their fingerprint.
    settings["input_key"] = input_key
  fingerprint = teacher_fingerprint(teacher.params, teacher.model_state, settings)

  meta = _read_json(os.path.join(directory, _META))
  if meta is not None:
    if meta.get("fingerprint") == fingerprint and meta.get("complete"):
      try:
        return load_teacher_cache(directory, fingerprint=fingerprint)
      except TeacherCacheCorrupt as corrupt:  # Never used: rebuilt (below) or refused.
        if on_stale == "error":
          raise
        if process_index == 0:
          logging.warning("%s; rebuilding it", corrupt)
    stale = meta.get("fingerprint") != fingerprint
    if stale and on_stale == "error":
      raise TeacherCacheError(
          f"the teacher cache in {directory} was built for another teacher or other settings; "
          "remove it, use another directory, or pass on_stale='rebuild'")
    if stale and process_index == 0:
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
                                NamedSharding(mesh, P("data")), input_key)
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


def _run_unit(topk, params, model_state, views, replay, lo, hi, batch_size, rows_sharding,
              input_key):
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
    images = views(idx, np.full((real,), replay))[input_key]
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
  checksums = {"algorithm": "crc32", "chunk_size": chunk_size}  # Verified on every open.
  for filename, kind, dtype in targets:
    tmp = os.path.join(directory, f"{filename}.tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for u in range(e * n_chunks):
      r, c = divmod(u, n_chunks)
      lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
      out[r, lo:hi] = np.load(os.path.join(units_dir, f"{u:07d}.{kind}.npy"))
      checksums.setdefault(kind, []).append(part_checksum(out[r, lo:hi]))
    out.flush()
    del out
    os.replace(tmp, os.path.join(directory, filename))
  _write_json(os.path.join(directory, _META),
              {**settings, "fingerprint": fingerprint, "complete": True, "checksums": checksums})
  shutil.rmtree(units_dir, ignore_errors=True)
  os.remove(os.path.join(directory, _BUILDING))

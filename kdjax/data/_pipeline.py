"""Training and evaluation batches, built with grain.

The data order is a function of the config alone. Training shuffles the *indices* of the split
with ``seed`` (a new permutation each epoch), cuts the index stream into global batches of
``global_batch_size`` and gives process ``p`` of ``P`` the rows ``[p*b, (p+1)*b)`` of each global
batch, ``b = global_batch_size / P``. A process loads and augments only its rows, and every
random draw depends on ``(seed, position in the stream)``, so concatenating the processes' slices
gives the very batch a single process would load. That is also the layout
``jax.make_array_from_process_local_data`` expects for a batch sharded over a process-major mesh.

With ``replay_epochs=E`` the order stays the same but the augmentation of example ``i`` in epoch
``e`` depends on ``(seed, e mod E, i)`` only: :class:`ReplayViews` makes exactly those views for
any (indices, replay epochs), which is how :mod:`kdjax.teacher_cache` runs the teacher on the
views the student will see.

With ``degrade`` (:class:`DegradeOptions`) every batch also holds :data:`DEGRADED_KEY`, a
degraded copy of ``'image'`` (downsampled, partly masked) made from the very same augmented
example, for a student that sees less than its teacher (``teacher_input_key``); its random
mask is a function of the example's position too, so the two views stay aligned and replayable.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

from absl import flags
import grain
import numpy as np

from kdjax.data import _augment
from kdjax.data._base import DataError, Dataset, DatasetInfo, Source
from kdjax.data._registry import get_dataset

Batch = dict[str, np.ndarray]

# The batch entry holding the degraded view (``degrade``); ``'image'`` keeps the full one.
DEGRADED_KEY = "image_degraded"
_DEGRADE_STREAM = 11  # Independent of kdjax.data._augment's stream tags.
_EVAL_STREAM = 12

# Whole batches are the pipeline's elements: a few threads and a short buffer keep the device fed
# without holding many batches in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
_STATE_KEYS = ("dataset", "seed", "global_batch_size")


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if int(global_batch_size) != global_batch_size or global_batch_size < 1:
    raise DataError(f"global_batch_size must be a positive int, got {global_batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"process_index must be in [0, process_count), got process_index="
                    f"{process_index}, process_count={process_count}")
  if global_batch_size % process_count:
    lower = global_batch_size - global_batch_size % process_count
    raise DataError(
        f"global_batch_size={global_batch_size} is not divisible by process_count="
        f"{process_count}; every process loads an equal slice, so set the global batch size to "
        f"a multiple of {process_count} (e.g. {lower or process_count} or "
        f"{lower + process_count})")
  return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class DegradeOptions:
  """How the degraded view (:data:`DEGRADED_KEY`) is made from an example's augmented image.

  Attributes:
    downsample: average each ``downsample x downsample`` block of pixels and repeat the mean
      back over the block (a low-resolution view at the original size, so one model
      architecture reads both views); 1: off. Must divide the image's height and width.
    mask_fraction: the share of pixels (all channels of each) set to 0 at random, a new mask
      per example and view; 0: off.
  """
  downsample: int = 1
  mask_fraction: float = 0.0

  def __post_init__(self):
    if int(self.downsample) != self.downsample or self.downsample < 1:
      raise DataError(f"degrade.downsample must be an int >= 1 (1: off), got {self.downsample}")
    if not 0.0 <= self.mask_fraction < 1.0:
      raise DataError(f"degrade.mask_fraction must be in [0, 1) (0: off), got "
                      f"{self.mask_fraction}")

  @property
  def active(self) -> bool:
    return self.downsample > 1 or self.mask_fraction > 0


def degrade_options(degrade: Any) -> DegradeOptions | None:
  """``None``, a dict, a ``ConfigDict`` or :class:`DegradeOptions`; ``None`` when it does
  nothing."""
  if degrade is None:
    return None
  if hasattr(degrade, "to_dict"):
    degrade = degrade.to_dict()
  if isinstance(degrade, Mapping):
    fields = {f.name for f in dataclasses.fields(DegradeOptions)}
    unknown = sorted(set(degrade) - fields)
    if unknown:
      raise DataError(f"unknown degrade option(s) {unknown}; the options are {sorted(fields)}")
    degrade = DegradeOptions(**degrade)
  if not isinstance(degrade, DegradeOptions):
    raise DataError(f"degrade must be a dict or None, got {type(degrade).__name__}")
  return degrade if degrade.active else None


def degrade_images(images: np.ndarray, options: DegradeOptions, seed: int,
                   keys: np.ndarray) -> np.ndarray:
  """The degraded view of float images ``[b, H, W, C]``; example ``j``'s mask is drawn from
  ``(seed, *keys[j])``, ``keys`` int ``[b, k]``."""
  b, h, w, c = images.shape
  f = int(options.downsample)
  out = images
  if f > 1:
    if h % f or w % f:
      raise DataError(f"degrade.downsample={f} does not divide the images' size {h}x{w}; "
                      "choose a factor that divides both")
    means = images.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))
    out = np.repeat(np.repeat(means, f, axis=1), f, axis=2)
  if options.mask_fraction > 0:
    keep = np.stack([np.random.default_rng((seed, _DEGRADE_STREAM, *map(int, k))).random((h, w))
                     >= options.mask_fraction for k in np.asarray(keys).reshape(b, -1)])
    out = out * keep[..., None]
  return out.astype(np.float32)


# The per-example targets a dense source gives besides ``'image'``, by key: their dtype.
# Segmentation: ``'label'`` int32 ``[H, W]``; detection: ``'boxes'`` float32 ``[max_boxes, 4]``
# (x0, y0, x1, y1 pixels) and ``'box_classes'`` int32 ``[max_boxes]`` (-1 where padded).
TARGET_DTYPES = {"label": np.int32, "boxes": np.float32, "box_classes": np.int32}


def target_specs(source: Source) -> dict[str, tuple[tuple[int, ...], Any]]:
  """The targets a source's examples carry: ``{key: (per-example shape, dtype)}``.

  ``label`` is ``()`` for classification and ``(H, W)`` for a class map; a detection source has
  ``boxes`` and ``box_classes`` (:data:`TARGET_DTYPES`).
  """
  example = source[0]
  return {k: (tuple(np.shape(example[k])), dtype) for k, dtype in TARGET_DTYPES.items()
          if k in example}


def _load_examples(source: Source, indices: np.ndarray) -> tuple[np.ndarray, Batch]:
  """The examples' float images ``[b, H, W, C]`` and their targets, stacked by key."""
  examples = [source[int(i)] for i in indices]
  images = np.stack([_augment.to_float(e["image"]) for e in examples])
  targets = {k: np.stack([np.asarray(e[k], dtype) for e in examples]).reshape(
      len(examples), *np.shape(examples[0][k])) for k, dtype in TARGET_DTYPES.items()
             if examples and k in examples[0]}
  return images, targets


def _check_dense_augment(targets: Batch, options: _augment.AugmentOptions) -> None:
  """Dense targets move with the pixels: a class map crops and flips with its image; boxes and
  mixing are refused rather than left misaligned."""
  dense = {k for k, v in targets.items() if k != "label" or v.ndim > 1}
  if not dense:
    return
  if options.mixes:
    raise DataError(f"augment.mixup_alpha / augment.cutmix_alpha mix whole examples but this "
                    f"dataset's targets {sorted(dense)} are per pixel or per box; set them to 0")
  if "boxes" in dense and (options.crop_padding or options.flip):
    raise DataError("augment.crop_padding / augment.flip would move the pixels but not the "
                    "boxes of this detection dataset; set config.data.augment.crop_padding=0 "
                    "and config.data.augment.flip=False")


def _augment_examples(images: np.ndarray, targets: Batch, views: Any,
                      options: _augment.AugmentOptions) -> tuple[np.ndarray, Batch]:
  """Crops and flips the images, and a class map ``targets['label']`` with the same draws (its
  padding is class 0, the background)."""
  _check_dense_augment(targets, options)
  out = _augment.crop_and_flip(images, views, options)
  label = targets.get("label")
  if label is not None and label.ndim == 3 and out is not images:
    label = _augment.crop_and_flip(label[..., None], views, options)[..., 0]
    targets = {**targets, "label": label}
  return out, targets


class ReplayViews:
  """The replayed training views of a split: ``(indices, replay epochs) -> batch``.

  Example ``i`` in replay epoch ``r`` is always augmented with the draws of ``(seed, r, i)``;
  the training stream of :func:`make_train_iterator` with the same settings and
  ``replay_epochs=E`` shows it in epoch ``e`` with ``r = e mod E``. Pickles into grain workers.

  Attributes:
    info: the dataset's :class:`DatasetInfo`.
    num_examples: size of the split.
    replay_epochs: ``E``.
    settings: the JSON-serialisable settings that fix the views (dataset, split, seed,
      replay_epochs, augment, standardize): what a teacher cache records and checks.
  """

  def __init__(self, source: Source, *, info: DatasetInfo, split: str, seed: int,
               replay_epochs: int, options: _augment.AugmentOptions, stats: Any,
               standardize: bool, degrade: DegradeOptions | None = None):
    if options.mixes:
      raise DataError(
          "augment.mixup_alpha / augment.cutmix_alpha mix each example with a partner drawn "
          "from its batch, so its view is not a function of the example alone and cannot be "
          "replayed; set them to 0 or drop replay_epochs (and the teacher cache)")
    if int(replay_epochs) != replay_epochs or replay_epochs < 1:
      raise DataError(f"replay_epochs must be an int >= 1, got {replay_epochs}")
    self.source = source
    self.info = info
    self.num_examples = len(source)
    self.seed = seed
    self.replay_epochs = int(replay_epochs)
    self.options = options
    self.stats = stats
    self.degrade = degrade
    self.settings = {"dataset": info.name, "split": split, "seed": seed,
                     "replay_epochs": self.replay_epochs,
                     "augment": dataclasses.asdict(options), "standardize": bool(standardize)}
    if degrade is not None:  # Absent when off: caches built before degrade existed stay valid.
      self.settings["degrade"] = dataclasses.asdict(degrade)

  def __call__(self, indices: np.ndarray, replay: np.ndarray) -> Batch:
    """The views of examples ``indices`` (int ``[b]``) in replay epochs ``replay`` (int ``[b]``).

    Returns:
      ``{'image': float32 [b, H, W, C], 'label': int32 [b], 'index': int32 [b],
      'replay_epoch': int32 [b]}``, and :data:`DEGRADED_KEY` with ``degrade``.
    """
    indices = np.asarray(indices)
    replay = np.broadcast_to(np.asarray(replay), indices.shape)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise DataError(f"indices must be in [0, {self.num_examples}), got "
                      f"[{indices.min()}, {indices.max()}]")
    if replay.size and (replay.min() < 0 or replay.max() >= self.replay_epochs):
      raise DataError(f"replay epochs must be in [0, {self.replay_epochs}), got "
                      f"[{replay.min()}, {replay.max()}]")
    views = _augment.draw_views(self.seed, indices, self.options, replay=replay)
    images, targets = _load_examples(self.source, indices)
    images, targets = _augment_examples(images, targets, views, self.options)
    if self.stats is not None:
      images = _augment.standardize(images, *self.stats)
    batch = {"image": images.astype(np.float32), **targets,
             "index": indices.astype(np.int32), "replay_epoch": replay.astype(np.int32)}
    if self.degrade is not None:
      batch[DEGRADED_KEY] = degrade_images(batch["image"], self.degrade, self.seed,
                                           np.stack([replay, indices], axis=-1))
    return batch


class _TrainBatchLoader:
  """Global batch of indices -> this process's augmented slice. Pickles into grain workers."""

  def __init__(self, source: Source, *, seed: int, global_batch_size: int, process_index: int,
               local_batch_size: int, options: _augment.AugmentOptions, stats: Any,
               replay: ReplayViews | None = None, degrade: DegradeOptions | None = None):
    self.source = source
    self.seed = seed
    self.global_batch_size = global_batch_size
    self.start = process_index * local_batch_size
    self.rows = np.arange(self.start, self.start + local_batch_size)
    self.options = options
    self.stats = stats
    self.replay = replay
    self.degrade = degrade

  def _views(self, step: int, indices: np.ndarray, rows: np.ndarray):
    positions = step * self.global_batch_size + rows
    views = _augment.draw_views(self.seed, positions, self.options)
    images, targets = _load_examples(self.source, indices[rows])
    images, targets = _augment_examples(images, targets, views, self.options)
    return images, targets, views

  def __call__(self, step: int, indices: np.ndarray) -> Batch:
    if self.replay is not None:
      positions = step * self.global_batch_size + self.rows
      epochs = positions // self.replay.num_examples
      return self.replay(indices[self.rows], epochs % self.replay.replay_epochs)
    images, targets, views = self._views(step, indices, self.rows)
    batch = {**targets, "index": indices[self.rows].astype(np.int32)}
    if self.options.mixes:
      partners = _augment.mixing_partners(self.seed, step, self.global_batch_size)[self.rows]
      # The partner's view is the one the partner gets in its own row, wherever it is loaded.
      partner_images, partner_targets, _ = self._views(step, indices, partners)
      images, lambdas = _augment.mix(images, partner_images, views, self.options)
      batch["label_mix"] = partner_targets["label"]
      batch["mix_lambda"] = lambdas
    if self.stats is not None:
      images = _augment.standardize(images, *self.stats)
    batch["image"] = images.astype(np.float32)
    if self.degrade is not None:
      positions = step * self.global_batch_size + self.rows
      batch[DEGRADED_KEY] = degrade_images(batch["image"], self.degrade, self.seed,
                                           positions[:, None])
    return batch


def _stats(info: DatasetInfo, standardize: bool):
  if not standardize:
    return None
  if info.mean is None or info.std is None:
    raise DataError(f"dataset '{info.name}' has no known per-channel mean/std; set "
                    "standardize=False (images stay in [0, 1])")
  return info.mean, info.std


def _check_seed(seed: int) -> int:
  if int(seed) != seed or not 0 <= seed < 2**32:
    raise DataError(f"seed must be an int in [0, 2**32), got {seed}")
  return int(seed)


class TrainIterator(Iterator[Batch]):
  """An endless iterator over this process's slices of the training batches.

  Its state is the number of global batches consumed (plus the settings that fix the data
  order), a small JSON-serialisable dict, so a run can save it next to its checkpoint and resume
  the exact same stream, with any number of processes or workers.

  Attributes:
    info: the dataset's :class:`DatasetInfo`.
    global_batch_size: examples per step, over all processes.
    local_batch_size: examples per step in this process.
    steps_per_epoch: ``num_train / global_batch_size`` (batches run across epoch boundaries).
    replay: the :class:`ReplayViews` that make the views under ``replay_epochs`` (``None``
      without replay).
  """

  def __init__(self, batches: grain.MapDataset, *, info: DatasetInfo, seed: int,
               global_batch_size: int, local_batch_size: int, worker_count: int,
               replay: ReplayViews | None = None):
    self._batches = batches
    self.replay = replay
    self.info = info
    self.seed = seed
    self.global_batch_size = global_batch_size
    self.local_batch_size = local_batch_size
    self.steps_per_epoch = info.num_train / global_batch_size
    self._worker_count = worker_count
    self._step = 0
    self._iterator: grain.DatasetIterator | None = None

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> Batch:
    if self._iterator is None:
      ds = self._batches[self._step:].to_iter_dataset(_READ_OPTIONS)
      if self._worker_count:
        if not flags.FLAGS.is_parsed():
          # grain reads its absl flags when it starts worker processes. Outside an absl app
          # (notebooks, tests, plain scripts) nothing parsed them: take their defaults.
          flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count,
                                                         per_worker_buffer_size=2))
      self._iterator = iter(ds)
    batch = next(self._iterator)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """``{'step', 'dataset', 'seed', 'global_batch_size'}`` (and ``'replay_epochs'`` under
    replay): JSON-serialisable."""
    state = {"step": self._step, "dataset": self.info.name, "seed": self.seed,
             "global_batch_size": self.global_batch_size}
    if self.replay is not None:
      state["replay_epochs"] = self.replay.replay_epochs
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continue from a state returned by :meth:`get_state` (of this or an earlier run)."""
    if not isinstance(state, Mapping) or not isinstance(state.get("step"), int) or (
        state["step"] < 0):
      raise DataError(f"not a kdjax training iterator state: {state!r}; expected the dict "
                      "returned by TrainIterator.get_state()")
    mine = self.get_state()
    # A state saved without replay has no 'replay_epochs': it must match an iterator without.
    checked = [k for k in _STATE_KEYS if k in state] + ["replay_epochs"]
    for key in checked:
      if state.get(key) != mine.get(key):
        raise DataError(
            f"the saved data iterator state has {key}={state.get(key)!r} but this iterator has "
            f"{key}={mine.get(key)!r}; resume with the config the state was saved with, or start "
            "the data stream afresh (do not restore its state)")
    self.close()
    self._step = state["step"]

  def close(self) -> None:
    """Stops prefetching (and the worker processes, if any); iteration restarts lazily."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class MappedIterator(Iterator[Batch]):
  """``fn(batch)`` for each batch of ``iterator``: a :class:`TrainIterator` with something added.

  ``get_state`` / ``set_state`` / ``close`` and the wrapped iterator's other attributes pass
  through, so it drops in where the wrapped iterator was used (the data position a checkpoint
  saves included).
  """

  def __init__(self, iterator: Iterator[Batch], fn: Callable[[Batch], Batch]):
    self.iterator = iterator
    self._fn = fn

  def __iter__(self) -> MappedIterator:
    return self

  def __next__(self) -> Batch:
    return self._fn(next(self.iterator))

  def get_state(self) -> dict[str, Any]:
    return self.iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.iterator.set_state(state)

  def close(self) -> None:
    self.iterator.close()

  def __enter__(self) -> MappedIterator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getattr__(self, name: str) -> Any:
    if name == "iterator":  # Not set yet (e.g. while unpickling): no recursion.
      raise AttributeError(name)
    return getattr(self.iterator, name)


def make_train_iterator(name: str | Dataset, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        augment: Any = None, worker_count: int = 0,
                        data_dir: str | None = None, split: str = "train",
                        standardize: bool = False,
                        replay_epochs: int | None = None,
                        degrade: Any = None) -> TrainIterator:
  """An endless, shuffled, augmented stream of this process's training batches.

  Each batch is a dict of numpy arrays, ``b = global_batch_size // process_count`` rows:

  - ``'image'``: float32 ``[b, H, W, C]``, in ``[0, 1]`` (or standardised, see below);
  - ``'label'``: int32 ``[b]`` (a segmentation dataset's class maps: ``[b, H, W]``, cropped and
    flipped with their images; a detection dataset has ``'boxes'`` float32 ``[b, max_boxes, 4]``
    and ``'box_classes'`` int32 ``[b, max_boxes]`` instead, see :data:`TARGET_DTYPES`);
  - ``'index'``: int32 ``[b]``, the example's index in the split (for memory-bank and
    contrastive losses);
  - with ``replay_epochs``, also ``'replay_epoch'``: int32 ``[b]``, the example's epoch modulo
    ``replay_epochs`` (with ``'index'``, the key of its view in a teacher cache);
  - with ``degrade``, also :data:`DEGRADED_KEY`: float32 ``[b, H, W, C]``, the degraded view
    of the same augmented (mixed, standardised) ``'image'``;
  - with mixup or CutMix, also ``'label_mix'`` (int32 ``[b]``, the partner's label) and
    ``'mix_lambda'`` (float32 ``[b]``, in ``[0, 1]``, the weight of ``'label'``): the soft
    target is ``mix_lambda * onehot(label) + (1 - mix_lambda) * onehot(label_mix)``. The
    partner is another row of the same global batch, so it may live on another process; each
    process loads what it needs.

  Epochs: the stream is the concatenation of one permutation of the split per epoch (a new one
  each epoch); a batch may straddle two epochs, no example is dropped.

  Args:
    name: a dataset name (see :func:`get_dataset`) or a :class:`Dataset`.
    global_batch_size: examples per step over all processes; fixes the data order.
    seed: the shuffle and augmentation seed, an int in ``[0, 2**32)``.
    process_index: this process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``); must divide
      ``global_batch_size``.
    augment: ``None`` or a dict / ConfigDict with ``crop_padding``, ``flip``, ``mixup_alpha``,
      ``cutmix_alpha`` (see :class:`AugmentOptions`).
    worker_count: grain worker processes (0: load in this process, with threads).
    data_dir: TFDS data directory.
    split: the split to train on.
    standardize: subtract the dataset's per-channel mean and divide by its std (known for
      cifar10/100, mnist, fashion_mnist, and computed for the built-in datasets); otherwise
      images stay in ``[0, 1]``.
    replay_epochs: augmentation replay: ``None`` (every epoch draws new views, from
      ``(seed, position)``) or ``E >= 1``: example ``i`` in epoch ``e`` gets the view drawn from
      ``(seed, e mod E, i)``, so the stream cycles through ``E`` fixed views per example (what a
      teacher cache stores). The data order is the same either way. Not with mixup / CutMix.
    degrade: ``None`` or a dict with :class:`DegradeOptions`' fields: add the degraded view.

  Returns:
    A :class:`TrainIterator` (with ``get_state`` / ``set_state``).
  """
  dataset = get_dataset(name, data_dir=data_dir)
  info = dataset.info
  seed = _check_seed(seed)
  local = _local_batch_size(global_batch_size, process_index, process_count)
  if int(worker_count) != worker_count or worker_count < 0:
    raise DataError(f"worker_count must be an int >= 0, got {worker_count}")
  source = dataset.source(split)
  if len(source) == 0:
    raise DataError(f"split '{split}' of dataset '{info.name}' is empty")
  options = _augment.augment_options(augment)
  stats = _stats(info, standardize)
  degrade = degrade_options(degrade)
  replay = None
  if replay_epochs is not None:
    replay = ReplayViews(source, info=info, split=split, seed=seed, replay_epochs=replay_epochs,
                         options=options, stats=stats, standardize=standardize, degrade=degrade)
  loader = _TrainBatchLoader(source, seed=seed, global_batch_size=global_batch_size,
                             process_index=process_index, local_batch_size=local,
                             options=options, stats=stats, replay=replay, degrade=degrade)
  batches = (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
             .batch(global_batch_size, drop_remainder=True).map_with_index(loader))
  return TrainIterator(batches, info=info, seed=seed, global_batch_size=global_batch_size,
                       local_batch_size=local, worker_count=int(worker_count), replay=replay)


def make_replay_views(name: str | Dataset, *, seed: int, replay_epochs: int, augment: Any = None,
                      data_dir: str | None = None, split: str = "train",
                      standardize: bool = False, degrade: Any = None) -> ReplayViews:
  """The views ``make_train_iterator(..., replay_epochs=replay_epochs)`` shows, by example.

  ``views(indices, replay)`` returns the very images (and labels) the training stream with the
  same ``name``, ``seed``, ``augment``, ``split`` and ``standardize`` gives example
  ``indices[j]`` in any epoch ``e`` with ``e mod replay_epochs == replay[j]``.

  Args:
    name, seed, augment, data_dir, split, standardize, degrade: as in
      :func:`make_train_iterator`.
    replay_epochs: ``E >= 1``, the number of distinct views per example.

  Returns:
    A :class:`ReplayViews`.
  """
  dataset = get_dataset(name, data_dir=data_dir)
  source = dataset.source(split)
  if len(source) == 0:
    raise DataError(f"split '{split}' of dataset '{dataset.info.name}' is empty")
  return ReplayViews(source, info=dataset.info, split=split, seed=_check_seed(seed),
                     replay_epochs=replay_epochs, options=_augment.augment_options(augment),
                     stats=_stats(dataset.info, standardize), standardize=standardize,
                     degrade=degrade_options(degrade))


class _EvalBatchLoader:
  """Global batch number -> this process's slice, padded past the end of the split."""

  def __init__(self, source: Source, *, global_batch_size: int, process_index: int,
               local_batch_size: int, input_shape: tuple[int, ...], stats: Any,
               degrade: DegradeOptions | None = None):
    self.targets = target_specs(source) if len(source) else {"label": ((), np.int32)}
    self.source = source
    self.global_batch_size = global_batch_size
    self.start = process_index * local_batch_size
    self.local_batch_size = local_batch_size
    self.input_shape = input_shape
    self.stats = stats
    self.degrade = degrade

  def __call__(self, step: int) -> Batch:
    first = step * self.global_batch_size + self.start
    positions = np.arange(first, first + self.local_batch_size)
    mask = positions < len(self.source)
    images = np.zeros((self.local_batch_size, *self.input_shape), np.float32)
    # Padded rows: zeros (box classes -1, no box), and batch['mask'] drops them anyway.
    targets = {k: np.full((self.local_batch_size, *shape), -1 if k == "box_classes" else 0,
                          dtype) for k, (shape, dtype) in self.targets.items()}
    if mask.any():
      images[mask], loaded = _load_examples(self.source, positions[mask])
      for k, v in loaded.items():
        targets[k][mask] = v
      if self.stats is not None:
        images[mask] = _augment.standardize(images[mask], *self.stats)
    batch = {"image": images, **targets,
             "index": np.where(mask, positions, -1).astype(np.int32), "mask": mask}
    if self.degrade is not None:
      # A fixed mask per evaluation example: every evaluation sees the same degraded split.
      batch[DEGRADED_KEY] = degrade_images(
          images, self.degrade, 0, np.stack([np.full_like(positions, _EVAL_STREAM), positions],
                                            axis=-1))
    return batch


class EvalBatches:
  """The fixed-size batches that cover an evaluation split once; iterate it as often as needed.

  Attributes:
    info: the dataset's :class:`DatasetInfo`.
    num_examples: real examples in the split.
  """

  def __init__(self, batches: grain.MapDataset, *, info: DatasetInfo, num_examples: int):
    self._batches = batches
    self.info = info
    self.num_examples = num_examples

  def __len__(self) -> int:
    return len(self._batches)

  def __iter__(self) -> Iterator[Batch]:
    return iter(self._batches.to_iter_dataset(_READ_OPTIONS))


def make_eval_batches(name: str | Dataset, *, batch_size: int, split: str | None = None,
                      process_index: int = 0, process_count: int = 1,
                      data_dir: str | None = None, standardize: bool = False,
                      degrade: Any = None) -> EvalBatches:
  """This process's slices of the batches that cover ``split`` exactly once, in order.

  Global batch ``s`` holds the examples ``[s*batch_size, (s+1)*batch_size)`` of the split; the
  last one is padded to full size. Process ``p`` gets rows ``[p*b, (p+1)*b)``,
  ``b = batch_size // process_count``, so every process yields the same number of batches.
  Each batch: ``'image'`` float32 ``[b, H, W, C]`` (zeros where padded), ``'label'`` int32
  ``[b]`` (0 where padded), ``'index'`` int32 ``[b]`` (-1 where padded) and ``'mask'`` bool
  ``[b]``, True for real examples: weight metrics by it; with ``degrade``, also
  :data:`DEGRADED_KEY`.

  Args:
    name: a dataset name (see :func:`get_dataset`) or a :class:`Dataset`.
    batch_size: examples per batch over all processes.
    split: the split to read; default: the dataset's ``eval_split``.
    process_index: this process.
    process_count: number of processes; must divide ``batch_size``.
    data_dir: TFDS data directory.
    standardize: as in :func:`make_train_iterator`.
    degrade: as in :func:`make_train_iterator`: batches also hold :data:`DEGRADED_KEY`, with a
      fixed mask per example.
  """
  dataset = get_dataset(name, data_dir=data_dir)
  info = dataset.info
  local = _local_batch_size(batch_size, process_index, process_count)
  source = dataset.source(info.eval_split if split is None else split)
  loader = _EvalBatchLoader(source, global_batch_size=batch_size, process_index=process_index,
                            local_batch_size=local, input_shape=info.input_shape,
                            stats=_stats(info, standardize), degrade=degrade_options(degrade))
  num_batches = math.ceil(len(source) / batch_size)
  return EvalBatches(grain.MapDataset.range(num_batches).map(loader), info=info,
                     num_examples=len(source))

"""An image dataset of ``kdjax.data`` as a run sees it, optionally only some of its classes."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data
from kdjax.train import tasks
from kdjax.train.rundata._shapes import Shapes


def _process_kwargs() -> dict[str, int]:
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


class ImageData:
  """An image dataset of ``kdjax.data`` as a run sees it; ``classes`` keeps only those labels."""

  def __init__(self, config: Any, info: data.DatasetInfo, *, classes: Sequence[int] = ()):
    self.config = config
    self.classes = tuple(int(c) for c in classes)
    self._dataset: Any = config.data.name
    if config.data.image_size:  # Only folder:<dir> datasets resize; others say so.
      self._dataset = data.get_dataset(config.data.name, data_dir=config.data.data_dir or None,
                                       image_size=config.data.image_size)
      info = self._dataset.info
    if self.classes:
      self._dataset = _class_subset(config, self.classes)
      info = self._dataset.info
    self.info = info
    self.shapes = Shapes(num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                         num_train=info.num_train)

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    b = batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, *self.shapes.input_shape), jnp.float32),
             **tasks.example_targets(self.targets, b),
             "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
    if data.DegradeOptions(**self.config.data.degrade.to_dict()).active:
      batch[data.DEGRADED_KEY] = batch["image"]
    augment = self.config.data.augment
    if augment.mixup_alpha > 0 or augment.cutmix_alpha > 0:
      batch["label_mix"] = jax.ShapeDtypeStruct((b,), jnp.int32)
      batch["mix_lambda"] = jax.ShapeDtypeStruct((b,), jnp.float32)
    return batch

  def _kwargs(self) -> dict[str, Any]:
    d = self.config.data
    return dict(**_process_kwargs(), data_dir=d.data_dir or None, standardize=d.standardize,
                degrade=d.degrade)

  def train_iterator(self, *, seed: int, batch_size: int,
                     replay_epochs: int | None = None) -> Any:
    d = self.config.data
    return data.make_train_iterator(
        self._dataset, global_batch_size=batch_size, seed=seed, augment=d.augment,
        worker_count=d.worker_count, split=d.train_split, replay_epochs=replay_epochs,
        **self._kwargs())

  def replay_views(self, *, seed: int, replay_epochs: int) -> data.ReplayViews:
    """The views ``train_iterator(seed=seed, replay_epochs=replay_epochs)`` shows, by example."""
    d = self.config.data
    return data.make_replay_views(self._dataset, seed=seed, replay_epochs=replay_epochs,
                                  augment=d.augment, data_dir=d.data_dir or None,
                                  split=d.train_split, standardize=d.standardize,
                                  degrade=d.degrade)

  def eval_batches(self, split: str | None = None) -> Any:
    d = self.config.data
    return data.make_eval_batches(self._dataset, batch_size=d.eval_batch_size,
                                  split=split or d.eval_split, **self._kwargs())

  @functools.cached_property
  def targets(self) -> dict[str, Any]:
    """The targets the examples carry (:func:`kdjax.data.target_specs`), read once."""
    return tasks.dataset_targets(self._dataset, self.config.data.train_split,
                                 data_dir=self.config.data.data_dir or None)

  @property
  def task(self) -> tasks.Task:
    return tasks.task_of(self.targets)

  def evaluate(self, runner: Any, state: Any, *, num_classes: int) -> dict[str, float]:
    return self.task.evaluate(runner, state, self.eval_batches(), num_classes)

  def fingerprint(self, samples: int = 64) -> str:
    """A SHA-256 of the dataset's description and of ``samples`` evenly spaced examples of the
    training and evaluation splits: another file under the same name, or other labels, give
    another fingerprint (a change to examples outside the sample can go unnoticed)."""
    d = self.config.data
    dataset = self._dataset
    if isinstance(dataset, str):
      dataset = data.get_dataset(dataset, data_dir=d.data_dir or None)
    digest = hashlib.sha256(repr(dataclasses.astuple(self.info)).encode())
    for split in dict.fromkeys((d.train_split, d.eval_split or self.info.eval_split)):
      source = dataset.source(split)
      n = len(source)
      digest.update(f"{split}:{n}".encode())
      for i in sorted(set(np.linspace(0, n - 1, min(n, samples)).astype(int).tolist())):
        example = source[i]
        digest.update(np.ascontiguousarray(example["image"]).tobytes())
        for key in self.targets:  # A class label, a class map, boxes.
          target = np.asarray(example[key])
          digest.update(str(int(target)).encode() if target.ndim == 0 else target.tobytes())
    return digest.hexdigest()


def _class_subset(config: Any, classes: tuple[int, ...]) -> data.ArrayDataset:
  """The examples of ``classes`` from every split, held in memory (labels unchanged)."""
  dataset = data.get_dataset(config.data.name, data_dir=config.data.data_dir or None)
  info = dataset.info
  splits = {}
  for split in {config.data.train_split, config.data.eval_split}:
    source = dataset.source(split)
    examples = [source[i] for i in range(len(source))]
    labels = np.asarray([e["label"] for e in examples], np.int32)
    keep = np.isin(labels, classes)
    if not keep.any():
      raise data.DataError(f"split '{split}' of dataset '{info.name}' has no example of classes "
                           f"{list(classes)}; choose classes in [0, {info.num_classes})")
    images = np.stack([examples[i]["image"] for i in np.flatnonzero(keep)])
    splits[split] = (images, labels[keep])
  name = f"{info.name}[classes {','.join(map(str, classes))}]"
  return data.ArrayDataset(name, splits, num_classes=max(classes) + 1,
                           eval_split=config.data.eval_split)

"""What a run reads: its training stream, its evaluation batches and its batch shapes.

:class:`ImageData` serves the image datasets of ``kdjax.data`` (optionally only some classes,
for continual-learning tasks); :class:`TextData` serves next-token windows of a text for
language-model runs (``config.data.name = 'text:stdlib'``). Both give resumable training
iterators (``get_state`` / ``set_state``) whose order depends on the seed alone.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data
from kdjax.train import evaluation
from kdjax.train import tasks

TEXT_PREFIX = "text:"
# Modules present (as single files) in every Python 3.9-3.13 standard library: the bundled text.
STDLIB_SOURCES = ("textwrap.py", "string.py", "random.py", "functools.py", "os.py",
                  "contextlib.py", "heapq.py", "copy.py", "abc.py", "tempfile.py", "fractions.py",
                  "calendar.py", "json/decoder.py", "json/encoder.py", "bisect.py")


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The dataset facts a run is built from."""

  num_classes: int
  input_shape: tuple[int, ...]
  num_train: int
  input_key: str = "image"
  label_key: str = "label"
  input_dtype: Any = jnp.float32


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


# Text -----------------------------------------------------------------------------------------


def stdlib_text() -> bytes:
  """About 320 KB of Python source from the running interpreter's standard library."""
  root = os.path.dirname(os.__file__)
  parts = []
  for name in STDLIB_SOURCES:
    with open(os.path.join(root, name), "rb") as f:
      parts.append(f.read())
  return b"\n".join(parts)


class TokenIterator:
  """Endless shuffled batches of rows of ``arrays`` (a new permutation of ``seed`` per epoch).

  Resumable: ``get_state()`` is the number of batches drawn. Process ``p`` of ``P`` gets rows
  ``[p*b, (p+1)*b)`` of every global batch.
  """

  def __init__(self, arrays: dict[str, np.ndarray], *, seed: int, batch_size: int):
    self.arrays = arrays
    self.seed = seed
    self.batch_size = batch_size
    self.n = len(next(iter(arrays.values())))
    if batch_size > self.n:
      raise data.DataError(f"batch_size={batch_size} is larger than the {self.n} training "
                           "sequences; lower config.batch_size")
    p, count = jax.process_index(), jax.process_count()
    local = batch_size // count
    self._rows = slice(p * local, (p + 1) * local)
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    per_epoch = self.n // self.batch_size
    epoch, i = divmod(self.position, per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    rows = order[i * self.batch_size:(i + 1) * self.batch_size][self._rows]
    self.position += 1
    return {k: v[rows] for k, v in self.arrays.items()}

  def get_state(self) -> dict[str, int]:
    return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size}

  def set_state(self, state: dict[str, int]) -> None:
    if state.get("seed") != self.seed or state.get("batch_size") != self.batch_size:
      raise data.DataError(f"the saved iterator state {state} belongs to another seed or batch "
                           "size; use a new --workdir")
    self.position = int(state["position"])

  def close(self) -> None:
    pass


class TextData:
  """Next-token windows of a text: 90% for training, the last 10% for evaluation.

  Tokens are the text's distinct bytes, numbered in byte order (102 for the bundled text), or,
  with ``config.data.tokenizer``, the ids of a Hugging Face ``tokenizer.json`` (the vocabulary
  is then the tokenizer's, which a model read from a Hugging Face directory must predict).
  """

  task = tasks.TASKS["classification"]  # Next-token classification: cross-entropy on targets.

  def __init__(self, config: Any):
    self.config = config
    name = config.data.name[len(TEXT_PREFIX):]
    if name != "stdlib":
      raise data.DataError(f"config.data.name={config.data.name!r}: the bundled text is "
                           "'text:stdlib' (the Python standard library's source)")
    length = int(config.data.sequence_length)
    stream, self.vocab_size = _tokenize(stdlib_text(), config.data.tokenizer)
    split = int(0.9 * len(stream))
    self.train = _windows(stream[:split], length)
    self.valid = _windows(stream[split:], length)
    self.shapes = Shapes(num_classes=self.vocab_size, input_shape=(length,),
                         num_train=len(self.train["tokens"]), input_key="tokens",
                         label_key="targets", input_dtype=jnp.int32)
    self.classes = ()

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, *self.shapes.input_shape)
    return {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "mask": jax.ShapeDtypeStruct(shape, jnp.bool_)}

  def train_iterator(self, *, seed: int, batch_size: int) -> TokenIterator:
    return TokenIterator(self.train, seed=seed, batch_size=batch_size)

  def eval_batches(self, split: str | None = None) -> list[dict[str, np.ndarray]]:
    del split
    b = int(self.config.data.eval_batch_size)
    n = len(self.valid["tokens"])
    out = []
    for start in range(0, n, b):
      rows = np.arange(start, start + b)
      real = rows < n
      batch = {k: v[np.minimum(rows, n - 1)] for k, v in self.valid.items()}
      batch["mask"] = batch["mask"] & real[:, None]
      count = jax.process_count()
      local = b // count
      p = jax.process_index()
      out.append({k: v[p * local:(p + 1) * local] for k, v in batch.items()})
    return out

  def evaluate(self, runner: Any, state: Any, *, num_classes: int) -> dict[str, float]:
    del num_classes
    return evaluation.evaluate(runner, state, self.eval_batches(),
                               evaluation.make_token_reduce_fn(), evaluation.finalize_tokens)

  def fingerprint(self) -> str:
    """A SHA-256 of the training and evaluation windows."""
    digest = hashlib.sha256()
    for split in (self.train, self.valid):
      for key in sorted(split):
        digest.update(key.encode() + np.ascontiguousarray(split[key]).tobytes())
    return digest.hexdigest()


def _tokenize(text: bytes, tokenizer: str) -> tuple[np.ndarray, int]:
  """The token stream of ``text`` and the vocabulary size: its distinct bytes (``tokenizer``
  empty) or the ids of the ``tokenizer.json`` that ``tokenizer`` names."""
  if not tokenizer:
    vocab, stream = np.unique(np.frombuffer(text, np.uint8), return_inverse=True)
    return stream.astype(np.int32), len(vocab)
  from kdjax import models  # pylint: disable=g-import-not-at-top
  from kdjax.train import schema  # pylint: disable=g-import-not-at-top
  file = schema.tokenizer_file(tokenizer)
  if not os.path.isfile(file):
    raise data.DataError(f"config.data.tokenizer={tokenizer!r}: {file} does not exist; point it "
                         "at a tokenizer.json or a Hugging Face model directory holding one")
  if os.path.basename(file) == "tokenizer.json":
    tok = models.load_tokenizer(os.path.dirname(file) or ".")
  else:
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top  # the 'hf' extra
    tok = Tokenizer.from_file(file)
  ids = np.asarray(tok.encode(text.decode("utf-8")).ids, np.int32)
  return ids, int(tok.get_vocab_size(with_added_tokens=True))


def _windows(stream: np.ndarray, length: int) -> dict[str, np.ndarray]:
  from kdjax import lm  # pylint: disable=g-import-not-at-top
  return lm.sequence_windows(stream, length)


def make(config: Any, *, classes: Sequence[int] = ()) -> ImageData | TextData:
  """The run data ``config.data`` names (``classes``: keep only those labels)."""
  if config.data.name.startswith(TEXT_PREFIX):
    if classes:
      raise data.DataError("class subsets apply to image datasets, not to text")
    return TextData(config)
  info = data.get_info(config.data.name, data_dir=config.data.data_dir or None,
                       image_size=config.data.image_size or None)
  return ImageData(config, info, classes=classes)

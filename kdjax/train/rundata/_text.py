"""Next-token windows of a text as a run sees them: the bundled text, its tokens, its batches."""
from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data
from kdjax.train import evaluation
from kdjax.train import tasks
from kdjax.train.rundata._shapes import Shapes

TEXT_PREFIX = "text:"
# Modules present (as single files) in every Python 3.9-3.13 standard library: the bundled text.
STDLIB_SOURCES = ("textwrap.py", "string.py", "random.py", "functools.py", "os.py",
                  "contextlib.py", "heapq.py", "copy.py", "abc.py", "tempfile.py", "fractions.py",
                  "calendar.py", "json/decoder.py", "json/encoder.py", "bisect.py")


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

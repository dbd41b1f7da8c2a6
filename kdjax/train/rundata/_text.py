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


# The bundled texts (``config.data.name = 'text:<name>'``) and what each is.
TEXTS = {
    "stdlib": "15 modules of the Python standard library's source, about 320 KB, the last 10% "
              "for evaluation",
    "stdlib_corpus": "the whole Python standard library's source (kdjax.data.stdlib_corpus, "
                     "about 10 MB), split by file, 10% of the files for evaluation",
}


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


class _Windows:
  """What token-window data shares: a shuffled stream of its training windows (``self.train``)
  and the evaluation of its evaluation windows (``self.valid``) in batches of
  ``config.data.eval_batch_size``, reporting token metrics (``perplexity``, ``bits_per_byte``).
  """

  task = tasks.TASKS["classification"]  # Next-token classification: cross-entropy on targets.

  def train_iterator(self, *, seed: int, batch_size: int) -> TokenIterator:
    return TokenIterator(self.train, seed=seed, batch_size=batch_size)

  def eval_batches(self, split: str | None = None) -> list[dict[str, np.ndarray]]:
    del split
    return _eval_batches(self.valid, int(self.config.data.eval_batch_size))

  def evaluate(self, runner: Any, state: Any, *, num_classes: int) -> dict[str, float]:
    del num_classes
    return evaluation.evaluate(runner, state, self.eval_batches(),
                               evaluation.make_token_reduce_fn(), evaluation.finalize_tokens)

  def fingerprint(self) -> str:
    """A SHA-256 of the training and evaluation windows."""
    return _fingerprint(self.train, self.valid)


class TextData(_Windows):
  """Next-token windows of a text: 90% for training, the last 10% for evaluation.

  Tokens are the text's distinct bytes, numbered in byte order (102 for the bundled text), or,
  with ``config.data.tokenizer``, the ids of a Hugging Face ``tokenizer.json`` (the vocabulary
  is then the tokenizer's, which a model read from a Hugging Face directory must predict); the
  windows of a tokenizer carry the bytes each target spells (``target_bytes``), which the
  evaluation sums for ``bits_per_byte``.
  """

  def __init__(self, config: Any):
    self.config = config
    name = config.data.name[len(TEXT_PREFIX):]
    if name not in TEXTS:
      raise data.DataError(f"config.data.name={config.data.name!r}: the bundled texts are "
                           + ", ".join(f"'{TEXT_PREFIX}{t}' ({what})" for t, what in TEXTS.items()))
    length = int(config.data.sequence_length)
    if name == "stdlib":
      self.text = stdlib_text()
      stream, self.vocab_size, nbytes = _tokenize(self.text, config.data.tokenizer)
      split = int(0.9 * len(stream))
    else:  # Split by file: the training files, then the validation files.
      corpus = data.stdlib_corpus()
      train_text, valid_text = corpus.text("train"), corpus.text("validation")
      self.text = train_text + valid_text
      stream, self.vocab_size, nbytes = _tokenize(self.text, config.data.tokenizer)
      if config.data.tokenizer:  # No token across the split's boundary.
        train_ids, _, train_bytes = _tokenize(train_text, config.data.tokenizer)
        valid_ids, _, valid_bytes = _tokenize(valid_text, config.data.tokenizer)
        stream = np.concatenate([train_ids, valid_ids])
        nbytes = np.concatenate([train_bytes, valid_bytes])
        split = len(train_ids)
      else:
        split = len(train_text)
    self._streams = {"train": (stream[:split], nbytes[:split]),
                     "valid": (stream[split:], nbytes[split:])}
    # Byte-level tokens spell one byte each: evaluation counts the targets themselves.
    byte_level = not config.data.tokenizer
    self.train = _windows(stream[:split], length, None if byte_level else nbytes[:split])
    self.valid = _windows(stream[split:], length, None if byte_level else nbytes[split:])
    self.shapes = Shapes(num_classes=self.vocab_size, input_shape=(length,),
                         num_train=len(self.train["tokens"]), input_key="tokens",
                         label_key="targets", input_dtype=jnp.int32)
    self.classes = ()
    self._retokenized = {}

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, *self.shapes.input_shape)
    return {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "mask": jax.ShapeDtypeStruct(shape, jnp.bool_)}

  def split_text(self, split: str) -> bytes:
    """The bytes of text the tokens of ``split`` (``'train'`` or ``'valid'``) spell."""
    ends = np.cumsum(self._streams["train"][1])
    cut = int(ends[-1]) if len(ends) else 0
    return self.text[:cut] if split == "train" else self.text[cut:]

  def encoding(self, split: str) -> Any:
    """The tokens of ``split`` with their byte offsets into :meth:`split_text` (a
    :class:`kdjax.lm.Encoding`; tokens that spell no byte are its special tokens)."""
    from kdjax import lm  # pylint: disable=g-import-not-at-top
    ids, nbytes = self._streams[split]
    ends = np.cumsum(nbytes, dtype=np.int64)
    return lm.Encoding(ids.astype(np.int32), np.stack([ends - nbytes, ends], axis=-1),
                       nbytes == 0)

  def retokenized(self, *, vocab_size: int, length: int, teacher_length: int,
                  with_teacher: bool) -> "RetokenizedText":
    """The same text under a byte-level BPE of ``vocab_size`` entries trained on the training
    split (:class:`RetokenizedText`); built once per setting."""
    settings = (vocab_size, length, teacher_length, with_teacher)
    cache = self._retokenized
    if settings not in cache:
      cache[settings] = RetokenizedText(self, vocab_size=vocab_size, length=length,
                                        teacher_length=teacher_length, with_teacher=with_teacher)
    return cache[settings]


class RetokenizedText(_Windows):
  """A :class:`TextData`'s text under another tokenizer: a byte-level BPE of ``vocab_size``
  entries (``kdjax.lm.BpeTokenizer``, trained on the training split, offline and deterministic).

  Training windows are :func:`kdjax.lm.cross_tokenizer_windows` of the BPE tokens (``tokens``,
  ``targets``, ``mask``, ``target_bytes``: ``length`` tokens each, no overlap) with, when
  ``with_teacher``, the :class:`TextData`'s own tokens of the same text (``teacher_tokens``, ...,
  ``teacher_length`` each) and their aligned spans, for a teacher of the :class:`TextData`'s
  tokenizer. Evaluation windows are the BPE tokens of the evaluation split, which is the
  :class:`TextData`'s evaluation text byte for byte: ``bits_per_byte`` compares the two.

  Args:
    base: the text data the teacher reads.
    vocab_size: BPE entries (256 bytes and the merges learnt from the training split).
    length: BPE tokens per window; 0: 90% of the BPE tokens that ``teacher_length`` of the
      teacher's tokens spell on average (most windows' text then fits the teacher's window).
    teacher_length: the teacher's tokens per window.
    with_teacher: keep the teacher's tokens and the spans in the training windows.

  Attributes:
    length, teacher_length: the windows' lengths (``length`` derived when given as 0).
    bytes_per_token: bytes of training text per BPE token.
    first_byte: when the teacher's tokens are bytes, int32 ``[vocab_size]``: the teacher's id
      of each BPE entry's first byte (-1: none), for :func:`kdjax.losses.next_byte_kl`; else
      ``None``.
  """

  def __init__(self, base: TextData, *, vocab_size: int, length: int, teacher_length: int,
               with_teacher: bool):
    from kdjax import lm  # pylint: disable=g-import-not-at-top
    self.config = base.config
    train_text, valid_text = base.split_text("train"), base.split_text("valid")
    self.tokenizer = lm.BpeTokenizer.train([train_text], vocab_size)
    if self.tokenizer.vocab_size != vocab_size:
      raise data.DataError(f"vocab_size={vocab_size}: the training text holds merges for only "
                           f"{self.tokenizer.vocab_size} entries; use at most that many")
    student, teacher = self.tokenizer.encode(train_text), base.encoding("train")
    if not length:
      length = max(1, int(0.9 * teacher_length * len(student) / len(teacher)))
    self.length, self.teacher_length = length, teacher_length
    try:
      windows = lm.cross_tokenizer_windows(student, teacher, length=length,
                                           teacher_length=teacher_length)
    except ValueError as e:
      raise data.DataError(str(e)) from None
    self.train = (windows if with_teacher else
                  {k: windows[k] for k in ("tokens", "targets", "mask", lm.TARGET_BYTES_KEY)})
    valid = self.tokenizer.encode(valid_text)
    self.valid = _windows(valid.ids, length, valid.num_bytes)
    self.vocab_size = vocab_size
    self.shapes = Shapes(num_classes=vocab_size, input_shape=(length,),
                         num_train=len(self.train["tokens"]), input_key="tokens",
                         label_key="targets", input_dtype=jnp.int32)
    self.classes = ()
    self.bytes_per_token = len(train_text) / len(student)
    self.first_byte = None
    if not self.config.data.tokenizer:  # The teacher's ids are the text's distinct bytes.
      ids = np.full(256, -1, np.int32)
      values = np.unique(np.frombuffer(base.text, np.uint8))
      ids[values] = np.arange(len(values), dtype=np.int32)
      self.first_byte = np.asarray([ids[self.tokenizer.token_bytes(v)[0]]
                                    if self.tokenizer.token_bytes(v) else -1
                                    for v in range(vocab_size)], np.int32)

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype)
            for k, v in self.train.items()}


def _eval_batches(valid: dict[str, np.ndarray], b: int) -> list[dict[str, np.ndarray]]:
  """Batches of ``b`` rows of every evaluation window (the last padded, its mask False), this
  process's rows of each."""
  n = len(valid["tokens"])
  out = []
  for start in range(0, n, b):
    rows = np.arange(start, start + b)
    real = rows < n
    batch = {k: v[np.minimum(rows, n - 1)] for k, v in valid.items()}
    batch["mask"] = batch["mask"] & real[:, None]
    count = jax.process_count()
    local = b // count
    p = jax.process_index()
    out.append({k: v[p * local:(p + 1) * local] for k, v in batch.items()})
  return out


def _fingerprint(*splits: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for split in splits:
    for key in sorted(split):
      digest.update(key.encode() + np.ascontiguousarray(split[key]).tobytes())
  return digest.hexdigest()


def _tokenize(text: bytes, tokenizer: str) -> tuple[np.ndarray, int, np.ndarray]:
  """The token stream of ``text``, the vocabulary size and the bytes each token spells: its
  distinct bytes (``tokenizer`` empty) or the ids of the ``tokenizer.json`` that ``tokenizer``
  names."""
  if not tokenizer:
    vocab, stream = np.unique(np.frombuffer(text, np.uint8), return_inverse=True)
    return stream.astype(np.int32), len(vocab), np.ones(len(stream), np.int64)
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
  string = text.decode("utf-8")
  enc = tok.encode(string)
  ids = np.asarray(enc.ids, np.int32)
  return (ids, int(tok.get_vocab_size(with_added_tokens=True)),
          _byte_lengths(string, np.asarray(enc.offsets, np.int64).reshape(-1, 2)))


def _byte_lengths(text: str, char_offsets: np.ndarray) -> np.ndarray:
  """Bytes of ``text``'s UTF-8 encoding each token spells, from the tokenizer's character
  offsets: token ``i`` spells the bytes after those of tokens ``< i``, up to the end of its
  own characters (the first token also the bytes before it, the last one those after it, e.g.
  whitespace a tokenizer leaves out of its offsets; a character split into several tokens
  counts with the first). Special tokens, which spell no text, get 0; the counts add up to the
  text's length in bytes."""
  points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  char_bytes = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
  byte_at = np.concatenate([[0], np.cumsum(char_bytes, dtype=np.int64)])
  real = char_offsets[:, 1] > char_offsets[:, 0]
  if not real.any():
    return np.zeros(len(char_offsets), np.int64)
  ends = np.where(real, byte_at[np.clip(char_offsets[:, 1], 0, len(points))], 0)
  ends[np.flatnonzero(real)[-1]] = byte_at[-1]
  return np.diff(np.maximum.accumulate(ends), prepend=0)


def _windows(stream: np.ndarray, length: int,
             nbytes: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Next-token windows of ``stream`` (:func:`kdjax.lm.sequence_windows`) and, given the bytes
  each token spells, the bytes of each target (``target_bytes``)."""
  from kdjax import lm  # pylint: disable=g-import-not-at-top
  windows = lm.sequence_windows(stream, length)
  if nbytes is not None:
    windows[lm.TARGET_BYTES_KEY] = lm.sequence_windows(
        np.asarray(nbytes, np.int64), length)["targets"].astype(np.int32)
  return windows

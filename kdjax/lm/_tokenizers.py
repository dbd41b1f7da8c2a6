"""Tokenizers with byte offsets: a byte-level one and byte-level BPE (the ``tokenizers`` library).

Distillation across tokenizers aligns two tokenizations of the same text by the bytes each token
covers, so both tokenizers here return, besides the ids, **byte** offsets into the text's UTF-8
encoding (``tokenizers`` itself reports character offsets, which cannot say where a token that
holds part of a multi-byte character starts or ends). Special tokens cover no byte
(``start == end``) and are flagged.

* :class:`ByteTokenizer`: one token per byte (ids 0-255), optional special ids above 255.
* :class:`BpeTokenizer`: byte-level BPE (GPT-2 style: every byte is in the alphabet, so any text
  tokenises and the tokens' bytes concatenate to the text). :meth:`BpeTokenizer.train` learns a
  vocabulary from text in seconds, offline; :meth:`BpeTokenizer.load` reads a ``tokenizer.json``
  of the same kind (e.g. a Hugging Face directory's).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
  """A tokenised text.

  Attributes:
    ids: int32 ``[n]`` token ids.
    offsets: int64 ``[n, 2]`` ``[start, end)`` byte offsets into the text's UTF-8 bytes; the
      non-special tokens tile the text in order (each starts where the previous one ended).
    special: bool ``[n]``, True for tokens that stand for no text (``start == end``).
  """

  ids: np.ndarray
  offsets: np.ndarray
  special: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def num_bytes(self) -> np.ndarray:
    """int64 ``[n]``: bytes of text per token (0 for special tokens)."""
    return self.offsets[:, 1] - self.offsets[:, 0]


def _as_bytes(text: str | bytes) -> bytes:
  if isinstance(text, str):
    return text.encode("utf-8")
  if isinstance(text, (bytes, bytearray, memoryview)):
    return bytes(text)
  raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def _encoding(ids: np.ndarray, lengths: np.ndarray) -> Encoding:
  ends = np.cumsum(lengths, dtype=np.int64)
  offsets = np.stack([ends - lengths, ends], axis=-1)
  return Encoding(ids.astype(np.int32), offsets, lengths == 0)


class ByteTokenizer:
  """One token per byte of the text's UTF-8 encoding: id = byte value.

  Args:
    special_tokens: names of special tokens, given ids ``256, 257, ...`` (e.g. ``('<bos>',)``);
      they never come out of :meth:`encode` and cover no byte when a caller inserts them.
  """

  def __init__(self, special_tokens: Sequence[str] = ()):
    self.special_tokens = {name: 256 + i for i, name in enumerate(special_tokens)}

  @property
  def vocab_size(self) -> int:
    return 256 + len(self.special_tokens)

  def token_id(self, name: str) -> int:
    """The id of special token ``name``."""
    if name not in self.special_tokens:
      raise KeyError(f"no special token {name!r}; ByteTokenizer(special_tokens=(..., {name!r}))")
    return self.special_tokens[name]

  def encode(self, text: str | bytes) -> Encoding:
    """Ids and byte offsets of ``text`` (str is encoded as UTF-8)."""
    ids = np.frombuffer(_as_bytes(text), np.uint8).astype(np.int32)
    return _encoding(ids, np.ones(len(ids), np.int64))

  def token_bytes(self, token_id: int) -> bytes:
    return bytes([token_id]) if 0 <= token_id < 256 else b""

  def fingerprint(self) -> str:
    """A hash that changes whenever the ids of some text would."""
    spec = json.dumps({"kind": "bytes", "special": self.special_tokens}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _tokenizers():
  """The ``tokenizers`` library, imported when a BPE tokenizer is built (not a core dependency)."""
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("BPE tokenizers need the `tokenizers` library: pip install "
                      "'tokenizers>=0.23,<0.24'") from e
  return tokenizers


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
  """GPT-2's map from the 256 printable stand-in characters of byte-level BPE to bytes."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + extra)] = b
      extra += 1
  return chars


class BpeTokenizer:
  """Byte-level BPE from the ``tokenizers`` library, with byte offsets.

  Build one with :meth:`train` (or :meth:`load` a ``tokenizer.json``); ``tokenizer`` is the
  underlying ``tokenizers.Tokenizer``.
  """

  def __init__(self, tokenizer):
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in kinds:
      raise ValueError("BpeTokenizer needs a byte-level BPE tokenizer (model BPE, pre-tokenizer "
                       f"ByteLevel), got model {spec.get('model', {}).get('type')!r} and "
                       f"pre-tokenizers {kinds}; train one with BpeTokenizer.train")
    if spec.get("normalizer") is not None:
      raise ValueError("BpeTokenizer needs a tokenizer without a normalizer (byte offsets must "
                       f"index the text as given), got {spec['normalizer'].get('type')!r}")
    self.tokenizer = tokenizer
    alphabet = _byte_alphabet()
    self.special_tokens = {t.content: i for i, t in
                           tokenizer.get_added_tokens_decoder().items() if t.special}
    special_ids = set(self.special_tokens.values())
    pieces = []
    for i in range(tokenizer.get_vocab_size()):
      token = tokenizer.id_to_token(i)
      if token is None or i in special_ids:
        pieces.append(b"")
      else:
        pieces.append(bytes(alphabet[c] for c in token))
    self._pieces = pieces
    self._lengths = np.asarray([len(p) for p in pieces], np.int64)

  @classmethod
  def train(cls, texts: Iterable[str | bytes], vocab_size: int, *,
            special_tokens: Sequence[str] = (), min_frequency: int = 2) -> "BpeTokenizer":
    """Learns a byte-level BPE vocabulary of ``vocab_size`` entries from ``texts`` (offline).

    Args:
      texts: the training text, e.g. ``[corpus.train.decode()]`` or one string per file.
      vocab_size: the largest vocabulary, ``>= 256 + len(special_tokens)`` (the 256 bytes are
        always in it, so every text tokenises); smaller when the text runs out of pairs seen
        ``min_frequency`` times.
      special_tokens: names of special tokens, ids ``0, 1, ...`` before the bytes.
      min_frequency: a pair seen fewer times is never merged.
    """
    tk = _tokenizers()
    if vocab_size < 256 + len(special_tokens):
      raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 bytes and "
                       f"{len(special_tokens)} special tokens; use at least "
                       f"{256 + len(special_tokens)}")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=list(special_tokens), show_progress=False)
    texts = (_as_bytes(t).decode("utf-8") for t in texts)
    tok.train_from_iterator(texts, trainer)
    return cls(tok)

  @classmethod
  def load(cls, path: str) -> "BpeTokenizer":
    """Reads a byte-level BPE ``tokenizer.json`` (a file, or a directory holding one)."""
    tk = _tokenizers()
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no tokenizer file at {path}; pass a tokenizer.json or the "
                              "directory holding it")
    return cls(tk.Tokenizer.from_file(path))

  def save(self, path: str) -> None:
    """Writes ``tokenizer.json`` to ``path``; an existing file is never overwritten."""
    if os.path.exists(path):
      raise FileExistsError(f"{path} exists; choose a new path")
    self.tokenizer.save(path)

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def token_id(self, name: str) -> int:
    if name not in self.special_tokens:
      raise KeyError(f"no special token {name!r}; train with special_tokens=(..., {name!r})")
    return self.special_tokens[name]

  def token_bytes(self, token_id: int) -> bytes:
    return self._pieces[token_id]

  def encode(self, text: str | bytes) -> Encoding:
    """Ids and byte offsets of ``text`` (bytes must be UTF-8)."""
    data = _as_bytes(text)
    ids = np.asarray(self.tokenizer.encode(data.decode("utf-8"), add_special_tokens=False).ids,
                     np.int32)
    lengths = self._lengths[ids] if len(ids) else np.zeros(0, np.int64)
    if int(lengths.sum()) != len(data):
      raise ValueError(f"the tokens' bytes add up to {int(lengths.sum())} bytes but the text has "
                       f"{len(data)}; the text holds a special token's name (e.g. '<|endoftext|>') or "
                       "the tokenizer changes the text (a prefix space), so its offsets cannot be "
                       "computed; remove special-token names from the text")
    return _encoding(ids, lengths)

  def fingerprint(self) -> str:
    """A hash of the serialised tokenizer (vocabulary, merges, settings)."""
    return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]

"""A text corpus that every Python install carries: its standard library's own source.

Several MB of real text, offline and deterministic: the ``.py`` files under the running
interpreter's standard library directory, in sorted path order, without tests (``test/``,
``tests/``, ``idle_test/``), installed packages (``site-packages/``, ``dist-packages/``) and the
generated tables of ``encodings/`` and ``pydoc_data/``. The split is by file: a file is in
validation when the SHA-256 of its relative path falls in the first ``validation_fraction`` of
hash space, so it depends on the path alone (adding or removing a file moves no other file).
Two machines with the same Python minor version list the same files; ``files_hash`` (the path
list) and ``content_hash`` (the bytes) say whether two corpora are the same.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import sysconfig

from kdjax.data._base import DataError

# Path components that exclude a file: tests, installed packages, caches.
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                           "__pycache__"})
# Top-level folders of generated data rather than written code.
EXCLUDED_TOP = frozenset({"encodings", "pydoc_data"})
SEPARATOR = b"\n\n"


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
  """A text split by file into training and validation documents.

  Attributes:
    name: what the corpus is, with the Python version (e.g. ``'stdlib python3.11'``).
    train_files, validation_files: the files' paths relative to the library root, sorted.
    train_documents, validation_documents: their bytes, in the same order.
    files_hash: SHA-256 of the sorted relative paths of both splits (and their split).
    content_hash: SHA-256 of every file's bytes, in the same order.
  """

  name: str
  train_files: tuple[str, ...]
  validation_files: tuple[str, ...]
  train_documents: tuple[bytes, ...]
  validation_documents: tuple[bytes, ...]
  files_hash: str
  content_hash: str

  def text(self, split: str) -> bytes:
    """The split's documents joined by a blank line: ``'train'`` or ``'validation'``."""
    if split == "train":
      return SEPARATOR.join(self.train_documents)
    if split == "validation":
      return SEPARATOR.join(self.validation_documents)
    raise DataError(f"split must be 'train' or 'validation', got {split!r}")

  @property
  def num_bytes(self) -> dict[str, int]:
    return {"train": sum(map(len, self.train_documents)),
            "validation": sum(map(len, self.validation_documents))}


def stdlib_files(root: str | None = None) -> tuple[str, ...]:
  """The corpus's files: sorted ``.py`` paths relative to ``root`` (the standard library)."""
  root = stdlib_root() if root is None else root
  found = []
  for folder, dirs, files in os.walk(root):
    rel = os.path.relpath(folder, root)
    parts = () if rel == "." else tuple(rel.split(os.sep))
    if parts and parts[0] in EXCLUDED_TOP:
      dirs[:] = []
      continue
    dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
    found.extend("/".join(parts + (f,)) for f in files if f.endswith(".py"))
  return tuple(sorted(found))


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def _in_validation(path: str, fraction: float) -> bool:
  digest = hashlib.sha256(path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < fraction * 2**64


@functools.lru_cache(maxsize=4)
def stdlib_corpus(*, validation_fraction: float = 0.1,
                  max_bytes: int | None = None) -> TextCorpus:
  """The Python standard library's source as a corpus split by file (read once per process).

  Args:
    validation_fraction: share of the files (by path hash) in validation, in ``(0, 1)``.
    max_bytes: keep only files whose cumulative size, in path-hash order, stays within this
      budget (a deterministic subset spread over the whole library); ``None`` keeps all (about
      10 MB under Python 3.11).

  Returns:
    A :class:`TextCorpus`. Files that are not UTF-8 are left out (their paths are not in it).
  """
  if not 0.0 < validation_fraction < 1.0:
    raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
  if max_bytes is not None and max_bytes <= 0:
    raise DataError(f"max_bytes must be positive or None, got {max_bytes}")
  root = stdlib_root()
  paths = stdlib_files(root)
  if max_bytes is not None:
    budget, kept = 0, set()
    # An order independent of the split's hash, so both splits shrink alike.
    for path in sorted(paths, key=lambda p: hashlib.sha256(b"select " + p.encode()).digest()):
      size = os.path.getsize(os.path.join(root, path))
      if budget + size > max_bytes:
        continue
      budget += size
      kept.add(path)
    paths = tuple(p for p in paths if p in kept)
  splits = {"train": ([], []), "validation": ([], [])}
  content = hashlib.sha256()
  for path in paths:
    with open(os.path.join(root, path), "rb") as f:
      data = f.read()
    try:
      data.decode("utf-8")
    except UnicodeDecodeError:
      continue
    split = "validation" if _in_validation(path, validation_fraction) else "train"
    splits[split][0].append(path)
    splits[split][1].append(data)
    content.update(hashlib.sha256(data).digest())
  if not splits["train"][0] or not splits["validation"][0]:
    raise DataError(f"the standard library at {root} gave {len(paths)} files, too few for a "
                    "train and a validation split; raise max_bytes or check the Python install")
  listing = "\n".join([f"train {p}" for p in splits["train"][0]]
                      + [f"validation {p}" for p in splits["validation"][0]])
  version = f"python{sys.version_info.major}.{sys.version_info.minor}"
  return TextCorpus(name=f"stdlib {version}",
                    train_files=tuple(splits["train"][0]),
                    validation_files=tuple(splits["validation"][0]),
                    train_documents=tuple(splits["train"][1]),
                    validation_documents=tuple(splits["validation"][1]),
                    files_hash=hashlib.sha256(listing.encode()).hexdigest(),
                    content_hash=content.hexdigest())

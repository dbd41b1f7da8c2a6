"""The standard-library corpus: deterministic, split by file, no tests or installed packages."""
import hashlib
import os

import pytest

from kdjax import data
from kdjax.data import _stdlib_text


@pytest.fixture(scope="module")
def corpus():
  return data.stdlib_corpus()


def test_corpus_is_several_megabytes_split_by_file(corpus):
  sizes = corpus.num_bytes
  assert sizes["train"] > 3_000_000 and sizes["validation"] > 200_000
  assert not set(corpus.train_files) & set(corpus.validation_files)
  assert list(corpus.train_files) == sorted(corpus.train_files)
  assert 0.05 < len(corpus.validation_files) / (len(corpus.train_files)
                                                + len(corpus.validation_files)) < 0.15
  assert "os.py" in corpus.train_files + corpus.validation_files
  root = _stdlib_text.stdlib_root()
  for path, doc in zip(corpus.validation_files, corpus.validation_documents):
    with open(os.path.join(root, path), "rb") as f:
      assert f.read() == doc
  assert corpus.text("train").startswith(corpus.train_documents[0] + b"\n\n")
  with pytest.raises(data.DataError, match="split must be"):
    corpus.text("test")


def test_excludes_tests_packages_and_generated_tables(corpus):
  for path in corpus.train_files + corpus.validation_files:
    parts = path.split("/")
    assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts)
    assert parts[0] not in ("encodings", "pydoc_data") and path.endswith(".py")


def test_deterministic_and_hashed(corpus):
  _stdlib_text.stdlib_corpus.cache_clear()
  again = data.stdlib_corpus()
  assert again is not corpus
  assert (again.files_hash, again.content_hash) == (corpus.files_hash, corpus.content_hash)
  listing = "\n".join([f"train {p}" for p in corpus.train_files]
                      + [f"validation {p}" for p in corpus.validation_files])
  assert corpus.files_hash == hashlib.sha256(listing.encode()).hexdigest()
  # The split depends on each path alone.
  for path in corpus.validation_files[:5]:
    assert int(hashlib.sha256(path.encode()).hexdigest()[:16], 16) < 0.1 * 2**64


def test_max_bytes_keeps_a_spread_subset(corpus):
  small = data.stdlib_corpus(max_bytes=1_000_000)
  total = sum(small.num_bytes.values())
  assert 900_000 < total <= 1_000_000 and small.validation_files
  assert set(small.train_files) <= set(corpus.train_files)
  assert set(small.validation_files) <= set(corpus.validation_files)
  with pytest.raises(data.DataError, match="validation_fraction"):
    data.stdlib_corpus(validation_fraction=1.5)

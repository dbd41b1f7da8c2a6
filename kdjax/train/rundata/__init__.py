"""What a run reads: its training stream, its evaluation batches and its batch shapes.

:func:`make` returns the run data that ``config.data`` names: :class:`ImageData` serves the image
datasets of ``kdjax.data`` (optionally only some classes, for continual-learning tasks);
:class:`TextData` serves next-token windows of a text for language-model runs
(``config.data.name = 'text:stdlib'``), :class:`RetokenizedText` the same text under a BPE
trained on it (a student whose tokenizer differs from its teacher's). All give resumable
training iterators (``get_state`` / ``set_state``) whose order depends on the seed alone, and
the :class:`Shapes` a run is built from. :class:`WrappedData` is the base of run data that
wraps another's and replaces only its training stream (and example batch).
"""
from __future__ import annotations

from typing import Any, Sequence

from kdjax import data
from kdjax.train.rundata._image import ImageData
from kdjax.train.rundata._shapes import Shapes
from kdjax.train.rundata._text import RetokenizedText
from kdjax.train.rundata._text import STDLIB_SOURCES
from kdjax.train.rundata._text import TEXT_PREFIX
from kdjax.train.rundata._text import TextData
from kdjax.train.rundata._text import TokenIterator
from kdjax.train.rundata._text import stdlib_text
from kdjax.train.rundata._wrapped import WrappedData

__all__ = ["ImageData", "RetokenizedText", "STDLIB_SOURCES", "Shapes", "TEXT_PREFIX", "TextData",
           "TokenIterator", "WrappedData", "make", "stdlib_text"]


def make(config: Any, *, classes: Sequence[int] = ()) -> ImageData | TextData:
  """The run data ``config.data`` names (``classes``: keep only those labels)."""
  if config.data.name.startswith(TEXT_PREFIX):
    if classes:
      raise data.DataError("class subsets apply to image datasets, not to text")
    return TextData(config)
  info = data.get_info(config.data.name, data_dir=config.data.data_dir or None,
                       image_size=config.data.image_size or None)
  return ImageData(config, info, classes=classes)

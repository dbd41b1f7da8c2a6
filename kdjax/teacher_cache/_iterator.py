"""The training iterator with the cached teacher outputs attached to every batch."""
from __future__ import annotations

from typing import Any

from kdjax import data


class CachedIterator(data.MappedIterator):
  """A :class:`kdjax.data.TrainIterator` whose batches carry the cached teacher outputs.

  ``get_state`` / ``set_state`` / ``close`` and the iterator's attributes pass through, so it
  drops in where the plain iterator was used (checkpointing the data position included).
  """

  def __init__(self, iterator: Any, cache: Any):
    super().__init__(iterator, cache.attach)
    self.cache = cache

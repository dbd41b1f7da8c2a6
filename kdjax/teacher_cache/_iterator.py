"""The training iterator with the cached teacher outputs attached to every batch."""
from __future__ import annotations

from typing import Any, Iterator, Mapping


class CachedIterator(Iterator[dict]):
  """A :class:`kdjax.data.TrainIterator` whose batches carry the cached teacher outputs.

  ``get_state`` / ``set_state`` / ``close`` and the iterator's attributes pass through, so it
  drops in where the plain iterator was used (checkpointing the data position included).
  """

  def __init__(self, iterator: Any, cache: Any):
    self.iterator = iterator
    self.cache = cache

  def __iter__(self) -> "CachedIterator":
    return self

  def __next__(self) -> dict:
    return self.cache.attach(next(self.iterator))

  def get_state(self) -> dict[str, Any]:
    return self.iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.iterator.set_state(state)

  def close(self) -> None:
    self.iterator.close()

  def __enter__(self) -> "CachedIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getattr__(self, name: str) -> Any:
    return getattr(self.iterator, name)

"""The base of run data that wraps another's: everything but the training stream is the inner
data's."""
from __future__ import annotations

from typing import Any


class WrappedData:
  """Run data that serves ``self.data``'s shapes, config, evaluation and example batch.

  Subclasses set ``self.data`` and replace the training stream (``train_iterator``) and, when
  their batches carry more entries, :meth:`example_batch`.
  """

  data: Any

  @property
  def shapes(self) -> Any:
    return self.data.shapes

  @property
  def config(self) -> Any:
    return self.data.config

  def evaluate(self, runner: Any, state: Any, *, num_classes: int) -> dict[str, float]:
    return self.data.evaluate(runner, state, num_classes=num_classes)

  def eval_batches(self, split: str | None = None) -> Any:
    return self.data.eval_batches(split)

  def example_batch(self, batch_size: int) -> dict[str, Any]:
    return self.data.example_batch(batch_size)

"""The ``distill`` kind's routed variant: ``combine='route'``, one teacher per example.

Each training example carries a ``teacher_id`` (the data's own ``'teacher_id'`` field, or, for
data without one, the contiguous parts of the training split in order: with two teachers the
first half of the windows goes to teacher 0, the second half to teacher 1). The step's teacher
is :func:`kdjax.lm.routed_teacher`: each teacher runs on its own examples, gathered into
``capacity`` rows (``0``: the batch size, which always fits), and the loss reads only the routed
teacher's outputs. The ids of every batch are checked on the host before the step (out of range,
or more examples of one teacher than the capacity): a clear error instead of a silent zero
teacher. Evaluation scores the student alone.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as data_lib
from kdjax import lm
from kdjax.train import rundata
from kdjax.train.errors import ConfigError


def teacher_ids(train: Mapping[str, np.ndarray], num_teachers: int) -> np.ndarray:
  """The training examples' teacher ids: ``train['teacher_id']``, or contiguous parts in order."""
  if lm.TEACHER_ID_KEY in train:
    return np.asarray(train[lm.TEACHER_ID_KEY])
  n = len(next(iter(train.values())))
  return (np.arange(n) * num_teachers // n).astype(np.int32)


class RoutedIterator(data_lib.MappedIterator):
  """Batches of a :class:`kdjax.train.rundata.TokenIterator` with the routed teacher's input
  (``batch[lm.ROUTED_INPUTS_KEY]``), each batch's ids checked first."""

  def __init__(self, iterator: Any, *, run: str, input_key: str, num_teachers: int,
               capacity: int | None):
    super().__init__(iterator, self._route)
    self.run = run
    self.input_key = input_key
    self.num_teachers = num_teachers
    self.capacity = capacity

  def _route(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    ids = batch[lm.TEACHER_ID_KEY]
    try:
      lm.check_teacher_ids(ids, self.num_teachers, capacity=self.capacity,
                           where=f"run '{self.run}': the batch's '{lm.TEACHER_ID_KEY}'")
    except ValueError as e:
      raise data_lib.DataError(str(e)) from None
    return {**batch, lm.ROUTED_INPUTS_KEY: {"inputs": batch[self.input_key],
                                            lm.TEACHER_ID_KEY: ids}}


class RoutedData(rundata.WrappedData):
  """A language-model run's token windows, each training window with its ``teacher_id``.

  Everything but the training stream and its example batch is the wrapped data's.
  """

  def __init__(self, data: Any, *, run: str, num_teachers: int, capacity: int, input_key: str):
    if not hasattr(data, "train") or not isinstance(getattr(data, "train"), Mapping):
      raise ConfigError(f"run '{run}': combine='route' routes the examples of token windows "
                        "(language models, config.data.name='text:...'); for image data use "
                        "another combine (e.g. 'mean_probs')")
    ids = teacher_ids(data.train, num_teachers)
    try:
      lm.check_teacher_ids(ids, num_teachers,
                           where=f"run '{run}': the training data's '{lm.TEACHER_ID_KEY}'")
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.data = data
    self.run = run
    self.num_teachers = num_teachers
    self.capacity = capacity or None
    self.input_key = input_key
    self.train = {**data.train, lm.TEACHER_ID_KEY: ids.astype(np.int32)}

  def example_batch(self, batch_size: int) -> dict[str, Any]:
    batch = self.data.example_batch(batch_size)
    ids = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return {**batch, lm.TEACHER_ID_KEY: ids,
            lm.ROUTED_INPUTS_KEY: {"inputs": batch[self.input_key], lm.TEACHER_ID_KEY: ids}}

  def train_iterator(self, *, seed: int, batch_size: int) -> RoutedIterator:
    if self.capacity is not None and self.capacity > batch_size:
      raise ConfigError(f"run '{self.run}': capacity={self.capacity} is larger than "
                        f"config.batch_size={batch_size}; use at most the batch size (or 0)")
    return RoutedIterator(rundata.TokenIterator(self.train, seed=seed, batch_size=batch_size),
                          run=self.run, input_key=self.input_key,
                          num_teachers=self.num_teachers, capacity=self.capacity)

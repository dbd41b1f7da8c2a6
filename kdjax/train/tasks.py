"""What a dataset asks a model to predict, and how a run trains and evaluates it.

The task is read from the targets the dataset's examples carry (:func:`kdjax.data.target_specs`),
never from its name: a scalar ``label`` is classification, a ``label`` map ``[H, W]`` semantic
segmentation, ``boxes`` with ``box_classes`` detection. A :class:`Task` says which batch entries
hold the targets, the supervised objective a run without a teacher trains with, and how a model
is evaluated (the metrics ``results.json`` holds: ``accuracy``...; ``miou``; ``map50``, ``map``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from kdjax import data, objectives
from kdjax.train import evaluation

__all__ = ("TASKS", "Task", "task_of")


@dataclasses.dataclass(frozen=True)
class Task:
  """A prediction task.

  Attributes:
    name: ``'classification'``, ``'segmentation'`` or ``'detection'``.
    metrics: the headline metrics its evaluation gives, in the order tables show them.
    supervised: ``supervised(label_key) -> Term``, the objective of a run without a teacher.
    evaluate: ``evaluate(runner, state, batches, num_classes) -> metrics``.
  """

  name: str
  metrics: tuple[str, ...]
  supervised: Callable[[str], objectives.Term]
  evaluate: Callable[[Any, Any, Any, int], dict[str, float]]


def _cross_entropy(label_key: str) -> objectives.Term:
  return objectives.combine({"ce": objectives.cross_entropy(label_key=label_key)})


def _classify(runner, state, batches, num_classes):
  return evaluation.evaluate(runner, state, batches, evaluation.make_reduce_fn(num_classes))


def _segment(runner, state, batches, num_classes):
  return evaluation.evaluate(runner, state, batches,
                             evaluation.make_segmentation_reduce_fn(num_classes),
                             evaluation.finalize_segmentation)


def _detect(runner, state, batches, num_classes):
  del num_classes
  return evaluation.evaluate_detection(runner, state, batches)


TASKS = {
    "classification": Task("classification", ("accuracy",), _cross_entropy, _classify),
    "segmentation": Task("segmentation", ("miou", "accuracy"), _cross_entropy, _segment),
    # The detector's own loss: heatmap focal loss and edge-distance bins (``point_detection``).
    "detection": Task("detection", ("map50", "map"),
                      lambda label_key: objectives.combine({"det": objectives.point_detection()}),
                      _detect),
}


def task_of(targets: Mapping[str, tuple[tuple[int, ...], Any]]) -> Task:
  """The task of a dataset whose examples carry ``targets`` (:func:`kdjax.data.target_specs`)."""
  if "boxes" in targets:
    return TASKS["detection"]
  label = targets.get("label")
  if label is not None and len(label[0]) == 2:
    return TASKS["segmentation"]
  return TASKS["classification"]


def example_targets(targets: Mapping[str, tuple[tuple[int, ...], Any]],
                    batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The targets' entries of an example batch of ``batch_size``, shapes only."""
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), jnp.dtype(dtype))
          for k, (shape, dtype) in targets.items()}


def dataset_targets(dataset: Any, split: str, *, data_dir: str | None = None) -> dict:
  """:func:`kdjax.data.target_specs` of ``split`` of ``dataset`` (a name or a Dataset)."""
  return data.target_specs(data.get_dataset(dataset, data_dir=data_dir).source(split))

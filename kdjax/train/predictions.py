"""A run's final predictions on the evaluation split, saved for ``kdjax report``'s panels.

At the end of a run (:func:`kdjax.train.execute.execute`), :func:`record` runs the final model
over the evaluation split once more and writes ``WORKDIR/<run>/predictions.npz``
(:func:`kdjax.workdir.predictions_path`), what the report needs to show what transferred:

* classification: every evaluated example's ``label``, ``prediction`` (the argmax) and
  ``confidence`` (the largest softmax probability), in the split's order, so the per-class
  accuracy, the agreement with another run's predictions (the teacher's) and the reliability
  diagram are computed from them;
* segmentation: the first :data:`EXAMPLES` examples' ``image``, ``label`` map and predicted
  ``prediction`` map;
* detection: the first :data:`EXAMPLES` examples' ``image``, ground truth (``gt_boxes``,
  ``gt_classes``, ``-1`` for padding) and detections (``boxes`` ``(x0, y0, x1, y1)`` pixels,
  ``scores``, ``classes``), by decreasing score.

Every file also holds ``task`` and ``num_classes``. The evaluation order is the same for every
run of a workdir, so the report lines up the teacher's, the student's and the distilled
student's predictions example by example.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import step as step_lib
from kdjax import workdir as contract
from kdjax.train import evaluation
from kdjax.train import rundata

__all__ = ["EXAMPLES", "TASKS", "collect", "record", "save"]

EXAMPLES = 4  # Examples kept for a dense task's overlays.
TASKS = ("classification", "segmentation", "detection")


def _mask(out: Mapping[str, jax.Array], n: int) -> jax.Array:
  mask = out.get("mask")
  return jnp.ones((n,), bool) if mask is None else mask.astype(bool)


@functools.lru_cache(maxsize=None)
def _classification_fn(label_key: str) -> Callable[[Mapping, Mapping], dict]:
  # One function object per key: the runners cache their compiled programs by its identity.
  def reduce_fn(out, batch):
    return {"label": batch[label_key].astype(jnp.int32),
            "prediction": out["prediction"].astype(jnp.int32),
            "confidence": out["confidence"].astype(jnp.float32),
            "mask": _mask(out, out["prediction"].shape[0])}
  return reduce_fn


@functools.lru_cache(maxsize=None)
def _segmentation_fn(label_key: str, input_key: str) -> Callable[[Mapping, Mapping], dict]:
  def reduce_fn(out, batch):
    return {"image": batch[input_key].astype(jnp.float32),
            "label": batch[label_key].astype(jnp.int32),
            "prediction": out["prediction"].astype(jnp.int32),
            "mask": _mask(out, out["prediction"].shape[0])}
  return reduce_fn


@functools.lru_cache(maxsize=None)
def _detection_fn(input_key: str) -> Callable[[Mapping, Mapping], dict]:
  def reduce_fn(out, batch):
    return {**evaluation.gather_detections(out, batch),
            "image": batch[input_key].astype(jnp.float32)}
  return reduce_fn


def collect(task: str, runner: Any, state: Any, batches: Any, *,
            examples: int = EXAMPLES) -> dict[str, np.ndarray]:
  """The predictions of ``state``'s student over ``batches`` for a ``task`` in :data:`TASKS`.

  Args:
    task: ``'classification'`` (every example), ``'segmentation'`` or ``'detection'`` (the
      first ``examples`` examples).
    runner: the run's runner (:func:`kdjax.parallel.make_runner`).
    state: the placed :class:`kdjax.DistillState`.
    batches: the evaluation batches (padding rows have ``batch['mask']`` False and are dropped).
    examples: how many examples a dense task keeps.

  Returns:
    ``{name: array}`` as the module docstring lists, without ``task`` and ``num_classes``.
  """
  if task == "classification":
    fn, eval_fn = _classification_fn(state.label_key), None
  elif task == "segmentation":
    fn, eval_fn = _segmentation_fn(state.label_key, state.input_key), None
  elif task == "detection":
    fn, eval_fn = _detection_fn(state.input_key), evaluation.detection_eval_step
  else:
    raise ValueError(f"task {task!r}: predictions are kept for {TASKS}")
  parts, kept = [], 0
  for batch in batches:
    out = jax.device_get(runner.eval(state, batch, fn, eval_fn=eval_fn, gather=True))
    keep = np.asarray(out.pop("mask"), bool)
    parts.append({k: np.asarray(v)[keep] for k, v in out.items()})
    kept += int(keep.sum())
    if task != "classification" and kept >= examples:
      break
  if not parts:
    raise ValueError("the evaluation split produced no batches")
  cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if task != "classification":
    cat = {k: v[:examples] for k, v in cat.items()}
  return cat


def save(path: str | os.PathLike, arrays: Mapping[str, Any], *, task: str,
         num_classes: int) -> None:
  """Writes ``arrays`` with ``task`` and ``num_classes`` to ``path`` (``.npz``), atomically."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez_compressed(tmp, task=np.array(task), num_classes=np.array(int(num_classes)),
                      **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def record(run_dir: str | os.PathLike, data: Any, runner: Any, state: Any) -> bool:
  """Writes ``run_dir/predictions.npz`` for a run's final ``state``; returns whether it did.

  Runs of image data whose state is a :class:`kdjax.DistillState` are recorded; others (an
  export, language models, a run of several models) have nothing for the report's panels.
  Every process takes part in the evaluation; process 0 writes.
  """
  image_data = getattr(data, "data", data)  # A stream carrying a teacher cache wraps it.
  if (runner is None or not isinstance(state, step_lib.DistillState)
      or not isinstance(image_data, rundata.ImageData)):
    return False
  task = image_data.task.name
  arrays = collect(task, runner, state, data.eval_batches())
  if contract.is_main():
    save(os.path.join(os.fspath(run_dir), contract.PREDICTIONS_FILE), arrays, task=task,
         num_classes=data.shapes.num_classes)
  return True

"""Evaluation: per-batch sums inside the compiled program, metrics from their totals.

:func:`make_reduce_fn` turns the per-example outputs of :func:`kdjax.eval_step` into masked
sums (counts, a confusion matrix, calibration bins). The runner computes them over the global
batch inside one program, so every process gets the same totals; :func:`finalize` turns the
totals over the whole split into metrics. Sums are integers where they count examples, so the
result does not depend on how the split was cut into batches or devices.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import lm
from kdjax import metrics
from kdjax.models import zoo

ECE_BINS = 15


def make_reduce_fn(num_classes: int, *, label_key: str = "label",
                   ece_bins: int = ECE_BINS) -> Callable[[Mapping, Mapping], dict]:
  """``reduce_fn(eval_outputs, batch) -> sums`` for :meth:`runner.eval`.

  The sums: ``count`` (real examples), ``correct``, ``top5``, ``agreement`` (with a teacher),
  ``confusion`` (``[num_classes, num_classes]``, rows are labels, columns predictions) and, per
  confidence bin of ``ece_bins`` equal-width bins over ``(0, 1]``, ``bin_count``,
  ``bin_correct`` and ``bin_confidence``.
  """

  def reduce_fn(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
    pred = out["prediction"]
    mask = out.get("mask")
    mask = jnp.ones(pred.shape, jnp.int32) if mask is None else mask.astype(jnp.int32)
    count_of = lambda x: jnp.sum(x.astype(jnp.int32) * mask)
    labels = batch[label_key].astype(jnp.int32)
    sums = {"count": jnp.sum(mask), "correct": count_of(out["correct"])}
    if "top5" in out:
      sums["top5"] = count_of(out["top5"])
    if "agreement" in out:
      sums["agreement"] = count_of(out["agreement"])
    onehot_labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None]
    onehot_pred = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)
    sums["confusion"] = onehot_labels.T @ onehot_pred
    confidence = out["confidence"].astype(jnp.float32)
    # Bin b holds confidences in (b / n, (b + 1) / n].
    bins = jnp.clip(jnp.ceil(confidence * ece_bins).astype(jnp.int32) - 1, 0, ece_bins - 1)
    in_bin = jax.nn.one_hot(bins, ece_bins, dtype=jnp.int32) * mask[:, None]
    sums["bin_count"] = jnp.sum(in_bin, axis=0)
    sums["bin_correct"] = out["correct"].astype(jnp.int32) @ in_bin
    sums["bin_confidence"] = confidence @ in_bin.astype(jnp.float32)
    return sums

  return reduce_fn


def accumulate(total: dict | None, sums: Mapping[str, Any]) -> dict:
  """Adds one batch's sums (device arrays) to the running totals (numpy, exact)."""
  sums = {k: np.asarray(jax.device_get(v)) for k, v in sums.items()}
  sums = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v.astype(np.int64)
          for k, v in sums.items()}
  if total is None:
    return sums
  return {k: total[k] + sums[k] for k in total}


def macro_f1(confusion: np.ndarray) -> float:
  """Unweighted mean F1 over the classes that occur in the labels or the predictions.

  Matches ``sklearn.metrics.f1_score(y_true, y_pred, average='macro')``.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  present = (support + predicted) > 0
  if not present.any():
    return 0.0
  f1 = 2 * tp[present] / (support[present] + predicted[present])
  return float(f1.mean())


def expected_calibration_error(bin_count, bin_correct, bin_confidence) -> float:
  """ECE (Guo et al. 2017): ``sum_b n_b / N * |accuracy_b - confidence_b|``."""
  bin_count = np.asarray(bin_count, np.float64)
  total = bin_count.sum()
  if total == 0:
    return 0.0
  nonempty = bin_count > 0
  gap = np.abs(np.asarray(bin_correct, np.float64)[nonempty] -
               np.asarray(bin_confidence, np.float64)[nonempty])
  return float(gap.sum() / total)


def finalize(total: Mapping[str, Any]) -> dict[str, float]:
  """Metrics from the totals over the split, fractions in ``[0, 1]``.

  Returns ``accuracy``, ``top5`` (with >= 5 classes), ``macro_f1``, ``ece``, ``agreement``
  (with a teacher) and ``count`` (examples evaluated).
  """
  count = int(total["count"])
  n = max(count, 1)
  metrics = {"accuracy": float(total["correct"]) / n}
  if "top5" in total:
    metrics["top5"] = float(total["top5"]) / n
  metrics["macro_f1"] = macro_f1(total["confusion"])
  metrics["ece"] = expected_calibration_error(total["bin_count"], total["bin_correct"],
                                              total["bin_confidence"])
  if "agreement" in total:
    metrics["agreement"] = float(total["agreement"]) / n
  metrics["count"] = count
  return metrics


def _token_sums(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
  mask = out.get("mask")
  mask = jnp.ones(out["prediction"].shape, jnp.int32) if mask is None else mask.astype(jnp.int32)
  # Data without byte counts is byte-level: each target spells one byte.
  nbytes = batch.get(lm.TARGET_BYTES_KEY)
  return {"count": jnp.sum(mask),
          "correct": jnp.sum(out["correct"].astype(jnp.int32) * mask),
          "nll": jnp.sum(out["nll"].astype(jnp.float32) * mask.astype(jnp.float32)),
          "bytes": jnp.sum(mask) if nbytes is None else jnp.sum(nbytes.astype(jnp.int32) * mask)}


def make_token_reduce_fn() -> Callable[[Mapping, Mapping], dict]:
  """``reduce_fn`` for token predictions (language models): masked token ``count``, summed
  ``nll`` (nats), ``correct`` and ``bytes``, the bytes of text the counted targets spell
  (``batch['target_bytes']``, or one per target for byte-level data without it).

  One function for every call, so the runner compiles the evaluation once per state.
  """
  return _token_sums


def finalize_tokens(total: Mapping[str, Any]) -> dict[str, float]:
  """``perplexity`` (exp of the mean token NLL), ``bits_per_byte`` (:func:`kdjax.lm.bits_per_byte`
  of the summed NLL over the bytes the targets spell: comparable across tokenizers), token
  ``accuracy``, ``nll`` and ``count``."""
  n = max(int(total["count"]), 1)
  nll = float(total["nll"]) / n
  out = {"perplexity": float(np.exp(nll))}
  if int(total.get("bytes", 0)) > 0:
    out["bits_per_byte"] = lm.bits_per_byte(float(total["nll"]), int(total["bytes"]))
  return {**out, "nll": nll, "accuracy": float(total["correct"]) / n,
          "count": int(total["count"])}


def evaluate(runner: Any, state: Any, batches: Any, reduce_fn: Callable,
             finalize_fn: Callable[[Mapping[str, Any]], dict] = finalize) -> dict[str, float]:
  """Runs ``reduce_fn`` over every batch of ``batches`` and returns ``finalize_fn``'s metrics."""
  total = None
  for batch in batches:
    total = accumulate(total, runner.eval(state, batch, reduce_fn))
  if total is None:
    raise ValueError("the evaluation split produced no batches")
  return finalize_fn(total)


def make_segmentation_reduce_fn(num_classes: int, *,
                                label_key: str = "label") -> Callable[[Mapping, Mapping], dict]:
  """``reduce_fn`` for per-pixel predictions ``[B, H, W]`` against class maps ``[B, H, W]``:
  ``count`` (real images), ``pixels`` (their pixels), the pixel ``confusion`` matrix
  (:func:`kdjax.metrics.confusion_matrix`) and, with a teacher, pixel ``agreement``."""

  def reduce_fn(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
    pred = out["prediction"]
    mask = out.get("mask")
    mask = jnp.ones(pred.shape[:1], jnp.int32) if mask is None else mask.astype(jnp.int32)
    per_pixel = mask.reshape(mask.shape + (1,) * (pred.ndim - 1)) * jnp.ones(pred.shape,
                                                                              jnp.int32)
    sums = {"count": jnp.sum(mask), "pixels": jnp.sum(per_pixel),
            "confusion": metrics.confusion_matrix(pred, batch[label_key], num_classes,
                                                  mask=mask, ignore_label=None)}
    if "agreement" in out:
      sums["agreement"] = jnp.sum(out["agreement"].astype(jnp.int32) * per_pixel)
    return sums

  return reduce_fn


def finalize_segmentation(total: Mapping[str, Any]) -> dict[str, float]:
  """``miou`` (:func:`kdjax.metrics.mean_iou`), ``accuracy`` (of the pixels), ``agreement``
  (pixels where student and teacher agree, with a teacher) and ``count`` (images)."""
  confusion = np.asarray(total["confusion"])
  pixels = max(int(total["pixels"]), 1)
  out = {"miou": metrics.mean_iou(confusion)[0],
         "accuracy": float(np.trace(confusion)) / pixels}
  if "agreement" in total:
    out["agreement"] = float(total["agreement"]) / pixels
  out["count"] = int(total["count"])
  return out


def detection_eval_step(state: Any, batch: Mapping[str, jax.Array], *,
                        box_tap: str = "box_logits", max_detections: int = 20) -> dict:
  """A point detector's detections on a batch, in inference mode: ``boxes`` ``[B, D, 4]``,
  ``scores`` ``[B, D]``, ``classes`` ``[B, D]`` (:func:`kdjax.models.zoo.decode_detections`)
  and ``mask``. The student must tap ``box_tap`` (its objective's ``point_detection`` does)."""
  out, _ = state.student_apply(state.params["student"], state.student_state,
                               batch[state.input_key], train=False, rng=None)
  if box_tap not in out.features:
    raise ValueError(f"the detector's outputs have no {box_tap!r} tap (they have "
                     f"{sorted(out.features)}); train it with a point_detection term, which taps "
                     "it")
  boxes, scores, classes = zoo.decode_detections(out.logits, out.features[box_tap],
                                                 max_detections=max_detections)
  result = {"boxes": boxes, "scores": scores, "classes": classes}
  if "mask" in batch:
    result["mask"] = batch["mask"]
  return result


def gather_detections(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
  """``reduce_fn`` (with ``gather``) keeping the detections and the ground truth per image."""
  mask = out.get("mask")
  mask = jnp.ones(out["scores"].shape[:1], bool) if mask is None else mask.astype(bool)
  return {"boxes": out["boxes"], "scores": out["scores"], "classes": out["classes"],
          "gt_boxes": batch["boxes"], "gt_classes": batch["box_classes"], "mask": mask}


def evaluate_detection(runner: Any, state: Any, batches: Any) -> dict[str, float]:
  """COCO ``map`` and ``map50`` (pycocotools, :func:`kdjax.metrics.coco_map`) of the student's
  detections over every real image of ``batches``, and ``count``."""
  parts = [jax.device_get(runner.eval(state, batch, gather_detections,
                                      eval_fn=detection_eval_step, gather=True))
           for batch in batches]
  if not parts:
    raise ValueError("the evaluation split produced no batches")
  cat = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
  keep = cat["mask"]
  scores = metrics.coco_map(cat["gt_boxes"][keep], cat["gt_classes"][keep], cat["boxes"][keep],
                            cat["scores"][keep], cat["classes"][keep])
  return {"map50": float(scores["map50"]), "map": float(scores["map"]), "count": int(keep.sum())}

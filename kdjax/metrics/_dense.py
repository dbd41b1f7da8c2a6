"""Mean IoU (segmentation) and COCO mAP through pycocotools (detection)."""
from __future__ import annotations

import contextlib
import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(predictions: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
                     num_classes: int, *, mask: jax.typing.ArrayLike | None = None,
                     ignore_label: int | None = 255) -> jax.Array:
  """Counts of (label, prediction) pairs over every kept pixel: ``[num_classes, num_classes]``.

  Args:
    predictions: integer predicted classes, e.g. ``argmax(logits, -1)``, shape ``[B, H, W]``.
    labels: integer true classes, same shape.
    num_classes: classes of the matrix.
    mask: optional ``[B]`` flag of real examples (a padded evaluation batch's ``mask``).
    ignore_label: label value of pixels left out; ``None`` keeps every pixel.

  Returns:
    ``counts[i, j]``: pixels of true class ``i`` predicted as ``j``, int32. Jit-able; sum the
    matrices of several batches before :func:`mean_iou`.
  """
  pred = jnp.asarray(predictions)
  labels = jnp.asarray(labels)
  if pred.shape != labels.shape:
    raise ValueError(f"predictions {pred.shape} and labels {labels.shape} must have one shape")
  keep = jnp.ones(labels.shape, bool) if ignore_label is None else labels != ignore_label
  if mask is not None:
    mask = jnp.asarray(mask).astype(bool)
    keep = keep & mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
  keep = keep & (labels >= 0) & (labels < num_classes)
  index = jnp.where(keep, labels * num_classes + pred, 0).astype(jnp.int32).ravel()
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(
      keep.ravel().astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: Any) -> tuple[float, np.ndarray]:
  r"""Mean intersection over union from a confusion matrix.

  .. math::
    \mathrm{IoU}_c = \frac{n_{cc}}{\sum_j n_{cj} + \sum_i n_{ic} - n_{cc}},\qquad
    \mathrm{mIoU} = \frac{1}{|C'|} \sum_{c \in C'} \mathrm{IoU}_c

  over the classes ``C'`` that occur in the labels or the predictions (a class absent from both
  has no IoU and is left out, as in the PASCAL VOC and Cityscapes evaluations).

  Args:
    confusion: ``[C, C]`` counts, rows true classes, columns predictions
      (:func:`confusion_matrix`).

  Returns:
    ``(miou, iou_per_class)``: a float, and ``[C]`` float64 with NaN for absent classes.
  """
  n = np.asarray(confusion, np.float64)
  if n.ndim != 2 or n.shape[0] != n.shape[1]:
    raise ValueError(f"a confusion matrix is square [C, C], got shape {n.shape}")
  tp = np.diag(n)
  union = n.sum(0) + n.sum(1) - tp
  iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
  present = union > 0
  return (float(np.mean(iou[present])) if present.any() else 0.0), iou


def coco_map(gt_boxes: Any, gt_classes: Any, boxes: Any, scores: Any,
             classes: Any) -> dict[str, float]:
  """COCO box mAP (IoU 0.50:0.95) and mAP@0.5, computed by pycocotools' ``COCOeval``.

  Args:
    gt_boxes: ``[images, max_boxes, 4]`` ground-truth ``(x0, y0, x1, y1)`` pixel boxes.
    gt_classes: ``[images, max_boxes]`` integer classes, ``-1`` for padding.
    boxes: ``[images, detections, 4]`` predicted boxes, same format.
    scores: ``[images, detections]`` confidences.
    classes: ``[images, detections]`` predicted classes; ``-1`` (or a score <= 0) drops one.

  Returns:
    ``{'map': AP@[.50:.95], 'map50': AP@.50}`` over at most 100 detections per image, in
    ``[0, 1]`` (pycocotools' ``stats[0]`` and ``stats[1]``; ``-1`` there, meaning no ground
    truth, is returned as 0).

  References:
    T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the ``pycocotools``
    package (``COCOeval`` with ``iouType='bbox'``).
  """
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

  gt_boxes, gt_classes = np.asarray(gt_boxes, np.float64), np.asarray(gt_classes)
  boxes, scores, classes = (np.asarray(boxes, np.float64), np.asarray(scores, np.float64),
                            np.asarray(classes))
  if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4 or gt_classes.shape != gt_boxes.shape[:2]:
    raise ValueError(f"ground truth must be boxes [images, max_boxes, 4] and classes [images, "
                     f"max_boxes]; got {gt_boxes.shape} and {gt_classes.shape}")
  if (boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]
      or classes.shape != scores.shape or len(boxes) != len(gt_boxes)):
    raise ValueError(f"detections must be boxes [images, D, 4], scores and classes [images, D] "
                     f"for the same {len(gt_boxes)} images; got {boxes.shape}, {scores.shape}, "
                     f"{classes.shape}")

  def xywh(b):
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

  num_classes = int(max(gt_classes.max(initial=-1), classes.max(initial=-1))) + 1
  images, annotations, results = [], [], []
  for i in range(len(gt_boxes)):
    images.append({"id": i})
    for b, c in zip(gt_boxes[i], gt_classes[i]):
      if c >= 0:
        w, h = b[2] - b[0], b[3] - b[1]
        annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                            "bbox": xywh(b), "area": float(w * h), "iscrowd": 0})
    for b, s, c in zip(boxes[i], scores[i], classes[i]):
      if c >= 0 and s > 0:
        results.append({"image_id": i, "category_id": int(c), "bbox": xywh(b),
                        "score": float(s)})
  if not annotations or not results:
    return {"map": 0.0, "map50": 0.0}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table.
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c} for c in range(num_classes)]}
    gt.createIndex()
    evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  stats = evaluation.stats
  return {"map": max(float(stats[0]), 0.0), "map50": max(float(stats[1]), 0.0)}

"""Evaluation metrics beyond classification accuracy: mean IoU for segmentation and COCO mAP
(computed by pycocotools) for detection.

Pure NumPy / JAX over arrays; no training code is imported. Segmentation accumulates a confusion
matrix batch by batch (:func:`confusion_matrix`, jit-able, summed across batches) and reads the
mean IoU from it (:func:`mean_iou`); detection gathers boxes per image and scores them once
(:func:`coco_map`).
"""
from kdjax.metrics._dense import coco_map
from kdjax.metrics._dense import confusion_matrix
from kdjax.metrics._dense import mean_iou

__all__ = ("coco_map", "confusion_matrix", "mean_iou")

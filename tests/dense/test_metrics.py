"""Mean IoU against a hand-computed case; COCO mAP through pycocotools on cases with known answers."""
import numpy as np
import pytest

from kdjax import metrics


def test_confusion_matrix_and_mean_iou_by_hand():
  labels = np.array([[[0, 0, 1], [1, 2, 255]]], np.int32)
  pred = np.array([[[0, 1, 1], [1, 1, 0]]], np.int32)
  counts = np.asarray(metrics.confusion_matrix(pred, labels, 4))
  expected = np.zeros((4, 4), np.int64)
  expected[0, 0] = expected[0, 1] = expected[2, 1] = 1
  expected[1, 1] = 2
  np.testing.assert_array_equal(counts, expected)
  miou, per_class = metrics.mean_iou(counts)
  # class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 2 / (2 + 4 - 2) = 1/2; class 2: 0 / (1 + 0 - 0);
  # class 3 never occurs and is left out.
  np.testing.assert_allclose(per_class[:3], [0.5, 0.5, 0.0])
  assert np.isnan(per_class[3])
  assert miou == pytest.approx(1 / 3)


def test_confusion_matrix_skips_padded_examples():
  labels = np.zeros((2, 2, 2), np.int32)
  pred = np.ones((2, 2, 2), np.int32)
  counts = np.asarray(metrics.confusion_matrix(pred, labels, 2, mask=np.array([1, 0])))
  assert counts.sum() == 4 and counts[0, 1] == 4


GT = np.array([[[2.0, 2.0, 12.0, 12.0], [20.0, 20.0, 30.0, 34.0], [0, 0, 0, 0]],
               [[5.0, 5.0, 15.0, 17.0], [0, 0, 0, 0], [0, 0, 0, 0]]])
GT_CLASSES = np.array([[1, 3, -1], [1, -1, -1]])


def test_perfect_detections_score_one():
  scores = np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]])
  out = metrics.coco_map(GT, GT_CLASSES, GT, scores, GT_CLASSES)
  assert out["map"] == pytest.approx(1.0) and out["map50"] == pytest.approx(1.0)


def test_a_shifted_box_drops_map_by_a_known_amount():
  # Image 1's box moved 3 px right: IoU = (7 * 12) / (13 * 12) = 0.538, a match at IoU 0.50 only.
  # Class 1 then has AP 1.0 at the threshold 0.50; at the nine stricter ones its recall stops at
  # 1/2 with precision 1, which COCO's 101-point interpolation counts as 51/101. Class 3 is
  # perfect: mAP = ((1 + 9 * 51 / 101) / 10 + 1) / 2.
  boxes = GT.copy()
  boxes[1, 0] += [3.0, 0.0, 3.0, 0.0]
  scores = np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]])
  out = metrics.coco_map(GT, GT_CLASSES, boxes, scores, GT_CLASSES)
  assert out["map50"] == pytest.approx(1.0)
  assert out["map"] == pytest.approx(((1 + 9 * 51 / 101) / 10 + 1) / 2, abs=1e-9)


def test_wrong_class_and_no_detections():
  scores = np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]])
  classes = np.where(GT_CLASSES >= 0, (GT_CLASSES + 1) % 5, -1)
  assert metrics.coco_map(GT, GT_CLASSES, GT, scores, classes)["map"] == 0.0
  assert metrics.coco_map(GT, GT_CLASSES, GT, np.zeros_like(scores), GT_CLASSES) == {
      "map": 0.0, "map50": 0.0}


def test_coco_map_checks_shapes():
  with pytest.raises(ValueError, match="for the same 2 images"):
    metrics.coco_map(GT, GT_CLASSES, GT[:1], np.ones((1, 3)), GT_CLASSES[:1])

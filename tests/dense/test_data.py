"""The digit-canvas datasets: deterministic, masks and boxes that agree with the pixels."""
import numpy as np
import pytest

from kdjax import data
from kdjax.data import _dense_digits


def test_registered_with_their_shapes_and_classes():
  seg, det = data.get_info("seg_digits"), data.get_info("det_digits")
  assert (seg.num_classes, seg.input_shape, seg.num_train, seg.num_eval) == (11, (32, 32, 1), 2000,
                                                                              300)
  assert (det.num_classes, det.input_shape) == (10, (48, 48, 1))
  assert seg.class_names[0] == "background"


def test_segmentation_canvases_are_deterministic_and_labelled_where_ink_is():
  source = data.get_dataset("seg_digits").source("train")
  a, b = source[7], source[7]
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(source[8]["image"], a["image"])
  for i in range(5):
    example = source[i]
    image, label = example["image"][..., 0], example["label"]
    assert image.dtype == np.float32 and label.dtype == np.int32 and label.shape == (32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.all(image[label > 0] > _dense_digits.INK_THRESHOLD)
    assert 1 <= len(np.unique(label)) - 1 <= 3  # 2-3 digits (two may share a class)
    assert np.all(label < 11)


def test_detection_boxes_are_tight_around_their_digit():
  source = data.get_dataset("det_digits").source("test")
  for i in range(5):
    example = source[i]
    image, boxes, classes = example["image"][..., 0], example["boxes"], example["box_classes"]
    kept = classes >= 0
    assert 2 <= kept.sum() <= 4 and np.all(classes[~kept] == _dense_digits.NO_BOX)
    ink = image > _dense_digits.INK_THRESHOLD
    covered = np.zeros_like(ink)
    for x0, y0, x1, y1 in boxes[kept].astype(int):
      crop = ink[y0:y1, x0:x1]
      # Tight: ink touches all four sides of the box.
      assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
      assert 3 <= x1 - x0 <= 16 and 3 <= y1 - y0 <= 16
      covered[y0:y1, x0:x1] = True
    assert not np.any(ink & ~covered)  # every inked pixel belongs to a box
  batch = source.arrays(0, 3)
  assert batch["boxes"].shape == (3, 4, 4) and batch["box_classes"].shape == (3, 4)


def test_bad_settings_are_refused():
  with pytest.raises(data.DataError, match="'segmentation' or 'detection'"):
    _dense_digits.DenseDigits("depth")
  with pytest.raises(data.DataError, match="no split 'val'"):
    data.get_dataset("seg_digits").source("val")

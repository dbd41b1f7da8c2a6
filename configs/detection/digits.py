"""Object detection of digits on canvases (``det_digits``, offline): a point-detector teacher
(CenterNet / FCOS style, stride 4), a narrower student alone and the same student distilled with
teacher-confidence-weighted heatmap KD added to its own detection loss. The task (and so the
metrics, COCO ``map`` and ``map50`` from pycocotools) follows from the dataset's boxes:

  python -m kdjax.main --config=configs/detection/digits.py --workdir=/tmp/kdjax_det

The boxes do not move with crops or flips, so this config trains without augmentation. Measured
results: docs/dense.md.
"""
from kdjax.configs import common


def get_config():
  config = common.digit_canvases("det_digits", "kdjax.models.zoo:PointDetector")
  config.objective = {
      "det": {"kind": "point_detection", "weight": 1.0},
      "heatmap_kd": {"kind": "heatmap_kd", "weight": 1.0, "temperature": 1.0},
  }
  return config

"""Semantic segmentation of digit canvases (``seg_digits``, offline): a U-Net teacher, a
narrower U-Net student alone and the same student distilled with pixel-wise KD and channel-wise
distillation of the logits (Shu et al., ICCV 2021) added to its cross-entropy. The task (and so
the metric, mean IoU over 11 classes, background included) follows from the dataset's per-pixel
labels:

  python -m kdjax.main --config=configs/segmentation/digits.py --workdir=/tmp/kdjax_seg

``results.json`` holds ``miou`` and pixel ``accuracy`` per run; ``--config.seed=1`` for another
seed.
"""
from kdjax.configs import common


def get_config():
  config = common.digit_canvases("seg_digits", "kdjax.models.zoo:SegmentationUNet")
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "pixel_kd": {"kind": "pixel_kd", "weight": 1.0, "temperature": 1.0},
      "cwd": {"kind": "channel_wise_distillation", "weight": 3.0, "temperature": 4.0},
  }
  return config

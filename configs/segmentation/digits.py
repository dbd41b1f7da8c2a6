"""Semantic segmentation of digit canvases (``seg_digits``, offline): a U-Net teacher (width 16),
a narrower U-Net student (width 8) alone and the same student distilled with pixel-wise KD and
channel-wise distillation of the logits (Shu et al., ICCV 2021) added to its cross-entropy. The
task (and so the metric, mean IoU over 11 classes, background included) follows from the
dataset's per-pixel labels:

  python -m kdjax.main --config=configs/segmentation/digits.py --workdir=/tmp/kdjax_seg

``results.json`` holds ``miou`` and pixel ``accuracy`` per run; ``--config.seed=1`` for another
seed. Every model trains 1200 steps: at 400 the width-8 student has not yet learned to tell the
digits apart (mean IoU about 0.3, mostly background) and distillation does not help there; by
1200 it has, and the distillation terms add to it. Measured results: docs/dense.md.
"""
from kdjax.configs import common


def get_config():
  config = common.digit_canvases("seg_digits", "kdjax.models.zoo:SegmentationUNet")
  steps = 1200
  config.total_steps = steps
  config.teacher.total_steps = steps
  config.log_every = 100
  config.eval_every = 600
  config.checkpoint_every = 400
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "pixel_kd": {"kind": "pixel_kd", "weight": 1.0, "temperature": 1.0},
      "cwd": {"kind": "channel_wise_distillation", "weight": 3.0, "temperature": 4.0},
  }
  return config

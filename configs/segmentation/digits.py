"""Semantic segmentation of digit canvases (``seg_digits``, offline): a U-Net teacher, a
narrower U-Net student alone and the same student distilled with pixel-wise KD and channel-wise
distillation of the logits (Shu et al., ICCV 2021) added to its cross-entropy. The task (and so
the metric, mean IoU over 11 classes, background included) follows from the dataset's per-pixel
labels:

  python -m kdjax.main --config=configs/segmentation/digits.py --workdir=/tmp/kdjax_seg

``results.json`` holds ``miou`` and pixel ``accuracy`` per run; ``--config.seed=1`` for another
seed.
"""
from kdjax.train import base_config


def get_config():
  config = base_config()
  config.seed = 0
  config.data.name = "seg_digits"
  config.data.eval_batch_size = 96
  config.batch_size = 32
  config.total_steps = 400
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200

  config.teacher.model = "kdjax.models.zoo:SegmentationUNet"
  config.teacher.model_kwargs = {"width": 16}
  config.teacher.total_steps = 400

  config.student.model = "kdjax.models.zoo:SegmentationUNet"
  config.student.model_kwargs = {"width": 8}

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"

  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 1.0},
      "pixel_kd": {"kind": "pixel_kd", "weight": 1.0, "temperature": 1.0},
      "cwd": {"kind": "channel_wise_distillation", "weight": 3.0, "temperature": 4.0},
  }
  return config

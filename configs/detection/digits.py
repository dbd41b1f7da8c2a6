"""Object detection of digits on canvases (``det_digits``, offline): a point-detector teacher
(CenterNet / FCOS style, stride 4), a narrower student alone and the same student distilled with
teacher-confidence-weighted heatmap KD added to its own detection loss. The task (and so the
metrics, COCO ``map`` and ``map50`` from pycocotools) follows from the dataset's boxes:

  python -m kdjax.main --config=configs/detection/digits.py --workdir=/tmp/kdjax_det

The boxes do not move with crops or flips, so this config trains without augmentation.
"""
from kdjax.train import base_config


def get_config():
  config = base_config()
  config.seed = 0
  config.data.name = "det_digits"
  config.data.eval_batch_size = 96
  config.batch_size = 32
  config.total_steps = 400
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200

  config.teacher.model = "kdjax.models.zoo:PointDetector"
  config.teacher.model_kwargs = {"width": 16}
  config.teacher.total_steps = 400

  config.student.model = "kdjax.models.zoo:PointDetector"
  config.student.model_kwargs = {"width": 8}

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"

  config.objective = {
      "det": {"kind": "point_detection", "weight": 1.0},
      "heatmap_kd": {"kind": "heatmap_kd", "weight": 1.0, "temperature": 1.0},
  }
  return config

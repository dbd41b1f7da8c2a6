"""Distil, then prune and quantize the student, and export every student to ONNX and StableHLO.

The quickstart pipeline with a student large enough to prune (an MLP 256-64, 33k parameters),
then two more runs that start from the distilled student and keep distilling from the teacher:
``student_kd_pruned`` (gradual magnitude pruning to 80% sparsity) and ``student_kd_int8``
(int8 quantization-aware distillation, with post-training quantization's accuracy beside it).
Every student is exported to ``WORKDIR/export`` and checked in onnxruntime and a deserialized
``jax.export``. Offline, a few minutes on a laptop CPU (needs ``pip install -e ".[deploy]"``):

  python -m kdjax.main --config=configs/compress.py --workdir=/tmp/kdjax_compress
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=64, total_steps=500, eval_every=250, checkpoint_every=250)
  config.teacher.model = "cnn_small"
  config.teacher.total_steps = 400
  config.teacher.optimizer.learning_rate = 0.05
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (256, 64)}
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 1e-4
  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "kd", "weight": 0.9, "temperature": 2.0},
  }
  config.compress.pruning = 0.8
  config.compress.quantization = "qat"
  config.compress.steps = 300
  config.export.formats = ("stablehlo", "onnx")
  return config

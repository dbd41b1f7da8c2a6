"""A pipeline small enough for tests: tiny MLPs on digits, a few dozen steps.

  python -m kdjax.main --config=tests/train/tiny_config.py --workdir=/tmp/kdjax_tiny
"""
from kdjax.train.config import base_config

STUDENT_STEPS = 40
TEACHER_STEPS = 20


def get_config():
  config = base_config()
  config.batch_size = 16  # divisible by the 8 fake devices of the test suite
  config.total_steps = STUDENT_STEPS
  config.log_every = 1  # every step's loss, to compare trajectories exactly
  config.eval_every = 20
  config.checkpoint_every = 10
  config.keep_checkpoints = 2
  config.progress_bar = False
  config.checked_steps = 0  # One compiled step per run; checked first steps have their own tests.
  config.data.name = "digits"
  config.data.eval_batch_size = 368
  config.teacher.model = "mlp"
  config.teacher.model_kwargs = {"hidden": (16,)}
  config.teacher.total_steps = TEACHER_STEPS
  config.teacher.optimizer.learning_rate = 0.2
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (8,)}
  config.optimizer.learning_rate = 0.05
  return config

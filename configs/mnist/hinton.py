r"""MNIST, Hinton, Vinyals & Dean 2015 (section 3): the paper's three models on real MNIST.

Three stages, because the teacher trains on jittered inputs and the students on plain ones
(config.data.augment is shared by the runs of one config); ``teacher`` and ``baseline`` are
independent and may run at the same time:

  python examples/mnist_to_idx.py --out=$HOME/data/mnist      # real MNIST as IDX files
  python -m kdjax.main --config=configs/mnist/hinton.py:teacher \
      --config.data.name=idx:$HOME/data/mnist --workdir=$HOME/kdjax/mnist/teacher
  python -m kdjax.main --config=configs/mnist/hinton.py:baseline \
      --config.data.name=idx:$HOME/data/mnist --workdir=$HOME/kdjax/mnist/baseline
  python -m kdjax.main --config=configs/mnist/hinton.py:distilled \
      --config.data.name=idx:$HOME/data/mnist \
      --config.teacher.checkpoint=$HOME/kdjax/mnist/teacher/teacher \
      --workdir=$HOME/kdjax/mnist/distilled

The ``baseline`` stage is the student trained alone with cross-entropy (its run is named
``teacher`` in that workdir's results.json: it is the supervised run of the pipeline, here of
the student's architecture).

``examples/hinton_mnist.py`` runs both stages for several seeds and prints the table;
docs/benchmarks.md has the measured numbers and where the protocol differs from the paper's.

- teacher: 784-1200-1200-10 ReLU MLP, dropout 0.3 on the hidden units (the paper's reference
  used 0.5, and 0.2 on the input pixels, over far more epochs), inputs translated by up to 2
  pixels (``crop_padding=2``), 12 epochs;
- student: 784-800-800-10 ReLU MLP, no regularization (no dropout, jitter or weight decay),
  trained alone ("student") and distilled ("student_kd") at temperature 20 with
  0.1 cross-entropy + 0.9 KD (KD scaled by T^2), 20 epochs;
- SGD with momentum 0.9, batch 128, cosine learning-rate decay from 0.1 (teacher) / 0.05
  (students).
"""
from kdjax.train import base_config

TRAIN_EXAMPLES = 60_000
BATCH_SIZE = 128
TEACHER_EPOCHS = 12
STUDENT_EPOCHS = 20


def epochs_to_steps(epochs: float, batch_size: int = BATCH_SIZE) -> int:
  return max(1, round(epochs * TRAIN_EXAMPLES / batch_size))


STAGES = ("teacher", "baseline", "distilled")


def get_config(stage: str = "distilled"):
  """``stage``: ``teacher``, ``baseline`` (the student alone) or ``distilled`` (needs a teacher)."""
  if stage not in STAGES:
    raise ValueError(f"configs/mnist/hinton.py:<stage>: stage is one of {STAGES}, got {stage!r}")
  config = base_config()
  config.seed = 0
  config.batch_size = BATCH_SIZE
  config.total_steps = epochs_to_steps(STUDENT_EPOCHS)
  config.log_every = 100
  config.eval_every = 0  # only the final test error is reported, as in the paper
  config.checkpoint_every = 2000
  config.data.name = "idx:~/data/mnist"  # set --config.data.name=idx:<dir> or npz:<file>
  config.data.eval_batch_size = 1000
  config.data.standardize = False  # pixels in [0, 1]

  config.teacher.model = "mlp"
  config.teacher.model_kwargs = {"hidden": (1200, 1200), "dropout_rate": 0.3}
  config.teacher.total_steps = epochs_to_steps(TEACHER_EPOCHS)
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (800, 800)}

  config.optimizer.name = "momentum"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "cosine"
  config.teacher.optimizer.learning_rate = 0.1

  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "kd", "weight": 0.9, "temperature": 20.0},
  }
  if stage == "distilled":
    config.compare_baseline = False  # the baseline is its own stage
  elif stage == "teacher":
    config.teacher_only = True
    config.data.augment.crop_padding = 2  # random translations of up to 2 pixels
  elif stage == "baseline":
    # The pipeline's supervised run, of the student's architecture and optimizer.
    config.teacher_only = True
    config.teacher.model = config.student.model
    config.teacher.model_kwargs = config.student.model_kwargs
    config.teacher.total_steps = config.total_steps
    config.teacher.optimizer.learning_rate = config.optimizer.learning_rate
  return config

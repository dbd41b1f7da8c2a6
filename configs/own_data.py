"""Your own images: a teacher, a small student and an objective for a dataset larger than the
bundled 8x8 digits.

  python -m kdjax.main --config=configs/own_data.py:folder:/data/my_images --workdir=/tmp/own
  python -m kdjax.main --config=configs/own_data.py:idx:/data/mnist --workdir=/tmp/own_mnist

The argument after ``configs/own_data.py:`` is ``config.data.name`` (``folder:<dir>``,
``npz:<file>``, ``idx:<dir>``; see ``kdjax.data.get_dataset``); ``--config.data.name=...``
works too. Class count and image shape come from the data (for large photos, shrink them with
``--config.data.image_size``: both models start by flattening the image).

Why not the quickstart itself: it is tuned for 1,437 images of 8x8 digits, where its teacher
(400 steps) is far ahead of an 8-unit student that would otherwise overfit. On real MNIST
(60,000 28x28 images) that teacher is barely ahead of a student trained alone, and distilling
makes the student worse. What follows Hinton, Vinyals & Dean (2015, section 3):

- a teacher well ahead of the student: a wide MLP (two hidden layers of 1,200) regularised by
  dropout, so that its softened outputs carry the similarities between classes;
- the same student budget for both students (an MLP with 32 hidden units, 1,500 steps of batch
  128, momentum SGD with a cosine decay): only the objective differs;
- 0.1 cross-entropy + 0.9 KD, the KD term scaled by T^2; T = 4, because for students of about
  30 hidden units the paper found temperatures of 2.5 to 4 better than higher ones.

Measured on real MNIST (``examples/mnist_to_idx.py``, ``idx:`` source, seeds 0, 1, 2, one full
pipeline each; docs/training.md, "Your own data"): teacher 98.11%, student alone 95.53%,
distilled student 96.08% on the means; the distilled student wins on every seed (+0.70, +0.45,
+0.50 points). Compare the two students on your data: the table printed at the end says which
way the gain goes.
"""
from kdjax.configs import common


def get_config(data: str | None = None):
  config = common.digits(batch_size=128, total_steps=1500, log_every=100, eval_every=1500,
                         checkpoint_every=500)
  config.seed = 0
  if data:
    config.data.name = data
  config.data.eval_batch_size = 1000

  common.teacher(config, "mlp", total_steps=1500, learning_rate=0.1,
                 model_kwargs={"hidden": (1200, 1200), "dropout_rate": 0.3})

  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (32,)}

  common.momentum_cosine(config, learning_rate=0.05, weight_decay=1e-4)
  config.objective = common.ce_and_kd(0.1, 0.9, temperature=4.0)
  return config

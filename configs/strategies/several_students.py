"""One teacher, several students: three students of different architectures distilled at once.

Runs on the bundled digits, offline, in about a minute on a laptop CPU:

  python -m kdjax.main --config=configs/strategies/several_students.py \
      --workdir=/tmp/kdjax_several

Runs: ``teacher`` (a CNN trained with cross-entropy) and ``students`` (kind
``several_students``): a small MLP (``mlp_8``), a wider MLP (``mlp_64``, with its own learning
rate) and a narrow CNN (``cnn_4``), each distilled with CE + KD, all three in one compiled step
that runs the teacher once per batch. Each student ends where its own ``distill`` run would
(same initialisation, step key and batches); results.json's ``students`` entry holds one
member per student, shown as ``students[mlp_8]``, ``students[mlp_64]`` and ``students[cnn_4]``.
``benchmarks/several_students.py`` measures the cost against separate runs.
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=64, total_steps=500, eval_every=250, checkpoint_every=250)
  config.seed = 0
  common.teacher(config, "cnn_small", total_steps=400, learning_rate=0.2,
                 model_kwargs={"width": 32})
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (8,)}
  config.models = {
      "mlp_64": {"model": "mlp", "model_kwargs": {"hidden": (64,)}},
      "cnn_4": {"model": "cnn_small", "model_kwargs": {"width": 4}},
  }
  common.momentum_cosine(config, learning_rate=0.05, weight_decay=1e-4)
  config.objective = common.ce_and_kd(0.1, 0.9, temperature=2.0)
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "students", "kind": "several_students", "teachers": ("teacher",),
       "students": ({"name": "mlp_8", "model": "student"},
                    {"name": "mlp_64", "model": "mlp_64", "optimizer": {"learning_rate": 0.1}},
                    {"name": "cnn_4", "model": "cnn_4"})},
  )
  return config

"""Learning without Forgetting on digits: task 1 is digits 0-4, task 2 digits 5-9.

  python -m kdjax.main --config=configs/strategies/lwf.py --workdir=/tmp/kdjax_lwf

Runs: ``old`` (an MLP trained on task 1: 5 outputs), then, from the same start (its classifier
widened to 10 outputs) and on task 2's data only, ``finetune`` (cross-entropy on the new
outputs) and ``lwf`` (the same plus KD from the frozen task-1 model on the old outputs; Li &
Hoiem 2016). Each new-task run reports ``old_accuracy`` (task-1 test images, argmax over the
old outputs), ``new_accuracy`` (task 2, new outputs) and ``accuracy`` (all test images, all
10 outputs).
"""
from kdjax.configs import common


def get_config():
  config = common.digits(batch_size=64, total_steps=600, eval_every=300, checkpoint_every=300)
  config.student.model = "mlp"
  config.student.model_kwargs = {"hidden": (64,)}
  common.adam(config, 3e-3)
  old, new = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
  config.runs = (
      {"name": "old", "kind": "supervised", "model": "student", "classes": old},
      {"name": "finetune", "kind": "lwf", "old": "old", "classes": new, "kd_weight": 0.0,
       "temperature": 2.0},
      {"name": "lwf", "kind": "lwf", "old": "old", "classes": new, "kd_weight": 1.0,
       "temperature": 2.0},
  )
  return config

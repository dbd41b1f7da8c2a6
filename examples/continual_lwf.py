"""Learning without Forgetting on digits: task 1 is digits 0-4, task 2 is digits 5-9.

Runs ``configs/strategies/lwf.py`` once per seed with ``kdjax.train.train_and_evaluate``, on
scikit-learn's bundled digits (offline): ``old``, an MLP trained on task 1 (5 outputs); then,
from the same start (its head widened to 10 outputs by ``kdjax.strategies.expand_head``) and
on the same batches of task 2's data only, ``finetune`` (cross-entropy on the new outputs) and
``lwf`` (the same plus KD from the frozen task-1 model on the old outputs,
``kdjax.strategies.lwf_objective``). The script prints, on the test split:

* old-task accuracy: task-1 test images, argmax over the 5 old outputs (the multi-head
  evaluation of the LwF paper);
* new-task accuracy: task-2 test images, argmax over the 5 new outputs;
* 10-way accuracy: all test images, argmax over all 10 outputs (class-incremental; harder).

  python examples/continual_lwf.py --seeds 0 1 2
"""
from __future__ import annotations

import time

import numpy as np

import _runs


def main():
  args = _runs.parser(__doc__, seeds=[0, 1, 2], steps=600, lwf_weight=1.0,
                      temperature=2.0).parse_args()
  start = time.time()

  def override(config):
    config.total_steps = args.steps
    config.runs = tuple({**r, "temperature": args.temperature,
                         "kd_weight": args.lwf_weight if r["name"] == "lwf" else 0.0}
                        if r["kind"] == "lwf" else r for r in config.runs)

  results = _runs.run_config("strategies/lwf", args.seeds, _runs.workdir(args, "lwf"), override)
  print(f"{'seed':>4}  {'after task 1':>12}  {'plain fine-tuning':>26}  {'LwF':>26}")
  print(f"{'':>4}  {'old':>12}" + f"  {'old':>8} {'new':>8} {'10-way':>8}" * 2)
  keys = ("old_accuracy", "new_accuracy", "accuracy")
  rows = [[r["old"]["accuracy"], *(r[run][k] for run in ("finetune", "lwf") for k in keys)]
          for r in results]
  for seed, row in [*zip(args.seeds, rows), ("mean", np.mean(rows, 0))]:
    print(f"{seed:>4}  {row[0]:>12.4f}  " + "  ".join(
        " ".join(f"{v:>8.4f}" for v in row[i:i + 3]) for i in (1, 4)))
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

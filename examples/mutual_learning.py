"""Deep mutual learning on digits: two small students trained together vs. trained apart.

Runs ``configs/strategies/mutual.py`` once per seed with ``kdjax.train.train_and_evaluate``, on
scikit-learn's bundled digits (offline): ``alone_0`` (an MLP 32) and ``alone_1`` (an MLP
64-32), each trained alone with cross-entropy, and ``mutual``, the same two students from the
same initialisation and on the same batches trained together with
``kdjax.strategies.mutual_step`` (each also matching the other's predictions). The script
prints each student's test accuracy, alone and mutual, per seed and on average.

  python examples/mutual_learning.py --seeds 0 1 2
"""
from __future__ import annotations

import time

import numpy as np

import _runs


def main():
  args = _runs.parser(__doc__, seeds=[0, 1, 2], steps=600,
                      kd_weight=(1.0, "weight of the mutual term")).parse_args()
  start = time.time()

  def override(config):
    config.total_steps = args.steps
    config.runs = tuple({**r, "kd_weight": args.kd_weight} if r["kind"] == "mutual" else r
                        for r in config.runs)

  results = _runs.run_config("strategies/mutual", args.seeds, _runs.workdir(args, "mutual"),
                             override)
  print("digits, test accuracy of student 0 (mlp 32) and student 1 (mlp 64-32)")
  print(f"{'seed':>4}  {'alone s0':>9} {'alone s1':>9}  {'DML s0':>9} {'DML s1':>9}")
  rows = [[r["alone_0"]["accuracy"], r["alone_1"]["accuracy"], r["mutual"]["accuracy_0"],
           r["mutual"]["accuracy_1"]] for r in results]
  for seed, row in [*zip(args.seeds, rows), ("mean", np.mean(rows, 0))]:
    print(f"{seed:>4}  {row[0]:>9.4f} {row[1]:>9.4f}  {row[2]:>9.4f} {row[3]:>9.4f}")
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

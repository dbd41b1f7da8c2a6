"""Deep mutual learning on digits: two small students trained together vs. trained apart.

Both students see only a small labelled subset of scikit-learn's bundled digits (offline), the
regime where the peer's soft predictions act as a regulariser. For each seed the two students
are trained with ``kdjax.strategies.mutual_step`` twice, from the same initialisation and on
the same batches: once with ``kd_weight=0`` (independent training) and once with
``kd_weight=1`` (deep mutual learning). The script prints each student's test accuracy.

  python examples/mutual_learning.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import kdjax
import kdjax.data
from kdjax import models, strategies


def load(train_size: int, seed: int):
  ds = kdjax.data.get_dataset("digits")
  train, test = ds.source("train"), ds.source("test")
  keep = np.random.default_rng(seed).permutation(len(train.labels))[:train_size]
  return ((train.images[keep], train.labels[keep].astype(np.int32)),
          (test.images, test.labels.astype(np.int32)))


def make_students(seed: int):
  shape = (8, 8, 1)
  return [models.create("mlp", num_classes=10, input_shape=shape, rng=jax.random.key(seed),
                        hidden=(32,)),
          models.create("mlp", num_classes=10, input_shape=shape,
                        rng=jax.random.key(seed + 1000), hidden=(64, 32))]


def accuracy(model: kdjax.models.Model, x, y) -> float:
  out, _ = jax.jit(model.apply, static_argnames="train")(model.params, model.model_state, x,
                                                         train=False, rng=None)
  return float(np.mean(np.argmax(out.logits, -1) == y))


def run(seed: int, kd_weight: float, args) -> list[float]:
  (x, y), (x_test, y_test) = load(args.train_size, seed)
  students = make_students(seed)
  example = {"image": x[:args.batch_size], "label": y[:args.batch_size]}
  state = strategies.MutualState.create(students, optax.adam(args.lr), jax.random.key(seed),
                                        example, temperature=1.0, kd_weight=kd_weight)
  step = jax.jit(strategies.mutual_step)
  rng = np.random.default_rng(seed)
  for _ in range(args.steps):
    idx = rng.integers(0, len(x), args.batch_size)
    state, _ = step(state, {"image": x[idx], "label": y[idx]})
  return [accuracy(state.student(k), x_test, y_test) for k in range(len(students))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--train_size", type=int, default=200)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--lr", type=float, default=3e-3)
  args = parser.parse_args()
  start = time.time()
  print(f"digits, {args.train_size} labelled training examples, {args.steps} steps; test accuracy "
        "of student 0 (mlp 32) and student 1 (mlp 64-32)")
  print(f"{'seed':>4}  {'alone s0':>9} {'alone s1':>9}  {'DML s0':>9} {'DML s1':>9}")
  results = {"alone": [], "dml": []}
  for seed in args.seeds:
    results["alone"].append(run(seed, 0.0, args))
    results["dml"].append(run(seed, 1.0, args))
    a, d = results["alone"][-1], results["dml"][-1]
    print(f"{seed:>4}  {a[0]:>9.4f} {a[1]:>9.4f}  {d[0]:>9.4f} {d[1]:>9.4f}")
  a, d = np.mean(results["alone"], 0), np.mean(results["dml"], 0)
  print(f"{'mean':>4}  {a[0]:>9.4f} {a[1]:>9.4f}  {d[0]:>9.4f} {d[1]:>9.4f}")
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

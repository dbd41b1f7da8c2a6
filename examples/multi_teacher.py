"""Distilling an ensemble of teachers on digits, one combination mode at a time.

Three teachers (two MLPs and a small CNN) are trained on scikit-learn's bundled digits
(offline). A small MLP student, which sees only a labelled subset, is then trained alone and
distilled (0.1 CE + 0.9 KD, T = 4) from ``kdjax.strategies.ensemble_teacher`` of the three, once
per combination mode ('weighted' counts the CNN twice). The script prints each teacher's and each ensemble's test accuracy and the
student's test accuracy per mode.

  python examples/multi_teacher.py --seeds 0 1
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import kdjax
import kdjax.data
from kdjax import models, objectives, strategies

SHAPE = (8, 8, 1)


def load():
  ds = kdjax.data.get_dataset("digits")
  train, test = ds.source("train"), ds.source("test")
  return ((train.images, train.labels.astype(np.int32)),
          (test.images, test.labels.astype(np.int32)))


def logits(model: kdjax.models.Model, x) -> np.ndarray:
  out, _ = jax.jit(model.apply, static_argnames="train")(model.params, model.model_state, x,
                                                         train=False, rng=None)
  return np.asarray(out.logits)


def accuracy(model, x, y) -> float:
  return float(np.mean(np.argmax(logits(model, x), -1) == y))


def train(student, teacher, objective, data, *, steps, batch_size, lr, seed):
  x, y = data
  example = {"image": x[:batch_size], "label": y[:batch_size]}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.adam(lr), rng=jax.random.key(seed),
                                    example_batch=example)
  step = jax.jit(kdjax.distill_step)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    state, _ = step(state, {"image": x[idx], "label": y[idx]})
  return strategies.as_teacher(state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--student_train_size", type=int, default=150)
  parser.add_argument("--teacher_steps", type=int, default=500)
  parser.add_argument("--student_steps", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  start = time.time()
  (x, y), (x_test, y_test) = load()
  ce = objectives.combine({"ce": objectives.cross_entropy()})
  kd = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                           "kd": (objectives.kd(temperature=4.0), 0.9)})
  modes = {"mean_logits": {"combine": "mean_logits"},
           "mean_probs": {"combine": "mean_probs"},
           "weighted": {"combine": "weighted", "weights": [1.0, 1.0, 2.0]},  # CNN counts double
           "confidence": {"combine": "confidence", "confidence": "max_prob"}}
  rows = {name: [] for name in ("alone", *modes)}
  ensemble_acc = {name: [] for name in modes}
  for seed in args.seeds:
    specs = [("mlp-256", "mlp", {"hidden": (256,)}), ("mlp-128-128", "mlp", {"hidden": (128, 128)}),
             ("cnn_small-8", "cnn_small", {"width": 8})]
    teachers = []
    for i, (_, name, kwargs) in enumerate(specs):
      init = models.create(name, num_classes=10, input_shape=SHAPE,
                           rng=jax.random.key(100 * seed + i), **kwargs)
      teachers.append(train(init, None, ce, (x, y), steps=args.teacher_steps,
                            batch_size=args.batch_size, lr=3e-3, seed=100 * seed + i))
    teacher_acc = [accuracy(t, x_test, y_test) for t in teachers]
    print(f"seed {seed}: teachers' test accuracy "
          + ", ".join(f"{label} {acc:.4f}" for (label, _, _), acc in zip(specs, teacher_acc)))

    keep = np.random.default_rng(seed).permutation(len(y))[:args.student_train_size]
    subset = (x[keep], y[keep])

    def student():
      return models.create("mlp", num_classes=10, input_shape=SHAPE,
                           rng=jax.random.key(10_000 + seed), hidden=(16,))

    common = dict(steps=args.student_steps, batch_size=args.batch_size, lr=3e-3, seed=seed)
    rows["alone"].append(accuracy(train(student(), None, ce, subset, **common), x_test, y_test))
    for name, kwargs in modes.items():
      ensemble = strategies.ensemble_teacher(teachers, **kwargs)
      ensemble_acc[name].append(accuracy(ensemble, x_test, y_test))
      distilled = train(student(), ensemble, kd, subset, **common)
      rows[name].append(accuracy(distilled, x_test, y_test))
  print(f"\nstudent mlp(16) on {args.student_train_size} labelled examples; test accuracy, mean "
        f"over seeds {args.seeds}")
  print(f"{'teacher':<22} {'ensemble acc':>12} {'student acc':>12}")
  print(f"{'none (student alone)':<22} {'-':>12} {np.mean(rows['alone']):>12.4f}")
  for name in modes:
    print(f"{'ensemble ' + name:<22} {np.mean(ensemble_acc[name]):>12.4f} "
          f"{np.mean(rows[name]):>12.4f}")
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

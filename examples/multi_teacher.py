"""Distilling an ensemble of teachers on digits, one combination mode at a time.

Three teachers (two MLPs and a small CNN) are trained on scikit-learn's bundled digits
(offline). A small MLP student, which sees only a labelled subset, is then trained alone and
distilled (0.1 CE + 0.9 KD, T = 4) from ``kdjax.strategies.ensemble_teacher`` of the three, once
per combination mode ('weighted' counts the CNN twice). Every model trains on
``kdjax.train.fit`` (``_runs.fit_distill``: NaN guard, ``metrics.jsonl`` per run under the
workdir, a final evaluation). The script prints each teacher's and each ensemble's test accuracy
and the student's test accuracy per mode. (``configs/strategies/multi_teacher.py`` runs one
mode from the command line; this script compares the modes, which a config does not express.)

  python examples/multi_teacher.py --seeds 0 1
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
import optax

import kdjax
import kdjax.data
from kdjax import models, objectives, strategies

import _runs

SHAPE = (8, 8, 1)
TEACHERS = (("mlp-256", "mlp", {"hidden": (256,)}), ("mlp-128-128", "mlp", {"hidden": (128, 128)}),
            ("cnn_small-8", "cnn_small", {"width": 8}))
MODES = {"mean_logits": {"combine": "mean_logits"},
         "mean_probs": {"combine": "mean_probs"},
         "weighted": {"combine": "weighted", "weights": [1.0, 1.0, 2.0]},  # the CNN counts double
         "confidence": {"combine": "confidence", "confidence": "max_prob"}}


def load():
  ds = kdjax.data.get_dataset("digits")
  train, test = ds.source("train"), ds.source("test")
  return ((train.images, train.labels.astype(np.int32)),
          (test.images, test.labels.astype(np.int32)))


def accuracy(model: kdjax.models.Model, x, y) -> float:
  out, _ = jax.jit(model.apply, static_argnames="train")(model.params, model.model_state, x,
                                                         train=False, rng=None)
  return float(np.mean(np.argmax(out.logits, -1) == y))


def batches(x, y, batch_size, seed):
  rng = np.random.default_rng(seed)
  while True:
    idx = rng.integers(0, len(x), batch_size)
    yield {"image": x[idx], "label": y[idx]}


def train(run_dir, student, teacher, objective, data, test, *, steps, batch_size, seed):
  x, y = data
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.adam(3e-3), rng=jax.random.key(seed),
                                    example_batch={"image": x[:batch_size],
                                                   "label": y[:batch_size]})
  state, final = _runs.fit_distill(
      state, batches(x, y, batch_size, seed), steps=steps, batch_size=batch_size, run_dir=run_dir,
      evaluate=lambda s: {"accuracy": accuracy(strategies.as_teacher(s), *test)})
  return strategies.as_teacher(state), final["accuracy"]


def main():
  args = _runs.parser(__doc__, seeds=[0, 1], student_train_size=150, teacher_steps=500,
                      student_steps=600, batch_size=64).parse_args()
  start = time.time()
  workdir = _runs.workdir(args, "multi_teacher")
  full, test = load()
  ce = objectives.combine({"ce": objectives.cross_entropy()})
  kd = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                           "kd": (objectives.kd(temperature=4.0), 0.9)})
  rows = {name: [] for name in ("alone", *MODES)}
  ensemble_acc = {name: [] for name in MODES}
  for seed in args.seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    teachers, teacher_acc = zip(*[
        train(os.path.join(seed_dir, label),
              models.create(name, num_classes=10, input_shape=SHAPE,
                            rng=jax.random.key(100 * seed + i), **kwargs),
              None, ce, full, test, steps=args.teacher_steps, batch_size=args.batch_size,
              seed=100 * seed + i) for i, (label, name, kwargs) in enumerate(TEACHERS)])
    print(f"seed {seed}: teachers' test accuracy " + ", ".join(
        f"{label} {acc:.4f}" for (label, _, _), acc in zip(TEACHERS, teacher_acc)))

    keep = np.random.default_rng(seed).permutation(len(full[1]))[:args.student_train_size]
    subset = (full[0][keep], full[1][keep])
    common = dict(steps=args.student_steps, batch_size=args.batch_size, seed=seed)
    for name in rows:
      student = models.create("mlp", num_classes=10, input_shape=SHAPE,
                              rng=jax.random.key(10_000 + seed), hidden=(16,))
      teacher = None if name == "alone" else strategies.ensemble_teacher(teachers, **MODES[name])
      if teacher is not None:
        ensemble_acc[name].append(accuracy(teacher, *test))
      _, acc = train(os.path.join(seed_dir, f"student_{name}"), student, teacher,
                     ce if name == "alone" else kd, subset, test, **common)
      rows[name].append(acc)
  print(f"\nstudent mlp(16) on {args.student_train_size} labelled examples; test accuracy, mean "
        f"over seeds {args.seeds}")
  print(f"{'teacher':<22} {'ensemble acc':>12} {'student acc':>12}")
  print(f"{'none (student alone)':<22} {'-':>12} {np.mean(rows['alone']):>12.4f}")
  for name in MODES:
    print(f"{'ensemble ' + name:<22} {np.mean(ensemble_acc[name]):>12.4f} "
          f"{np.mean(rows[name]):>12.4f}")
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

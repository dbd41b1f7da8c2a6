"""Learning without Forgetting on digits: task 1 is digits 0-4, task 2 is digits 5-9.

An MLP is trained on task 1 (5 outputs). Its head is then widened to 10 outputs
(``kdjax.strategies.expand_head``) and the model is trained on task 2's data only, twice from
the same start and on the same batches: with plain fine-tuning (cross-entropy on the new
outputs) and with LwF (the same plus KD from the frozen task-1 model on the old outputs,
``kdjax.strategies.lwf_objective``). The script prints, on scikit-learn's bundled digits
(offline) test split:

* old-task accuracy: task-1 test images, argmax over the 5 old outputs (the multi-head
  evaluation of the LwF paper);
* new-task accuracy: task-2 test images, argmax over the 5 new outputs;
* 10-way accuracy: all test images, argmax over all 10 outputs (class-incremental; harder).

  python examples/continual_lwf.py --seeds 0 1 2
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

OLD, NEW, SHAPE, HIDDEN = 5, 5, (8, 8, 1), (64,)


def load():
  ds = kdjax.data.get_dataset("digits")
  out = {}
  for split in ("train", "test"):
    src = ds.source(split)
    x, y = src.images, src.labels.astype(np.int32)
    out[split] = {"task1": (x[y < OLD], y[y < OLD]), "task2": (x[y >= OLD], y[y >= OLD]),
                  "all": (x, y)}
  return out


def logits(model: kdjax.models.Model, x) -> np.ndarray:
  out, _ = jax.jit(model.apply, static_argnames="train")(model.params, model.model_state, x,
                                                         train=False, rng=None)
  return np.asarray(out.logits)


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


def evaluate(model, test) -> dict[str, float]:
  (x1, y1), (x2, y2), (xa, ya) = test["task1"], test["task2"], test["all"]
  return {"old": float(np.mean(np.argmax(logits(model, x1)[:, :OLD], -1) == y1)),
          "new": float(np.mean(np.argmax(logits(model, x2)[:, OLD:], -1) + OLD == y2)),
          "all": float(np.mean(np.argmax(logits(model, xa), -1) == ya))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--lwf_weight", type=float, default=1.0)
  parser.add_argument("--temperature", type=float, default=2.0)
  args = parser.parse_args()
  start = time.time()
  data = load()
  common = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
  print(f"{'seed':>4}  {'after task 1':>12}  {'plain fine-tuning':>26}  {'LwF':>26}")
  print(f"{'':>4}  {'old':>12}  {'old':>8} {'new':>8} {'10-way':>8}  {'old':>8} {'new':>8} "
        f"{'10-way':>8}")
  results = {"task1": [], "plain": [], "lwf": []}
  for seed in args.seeds:
    init = models.create("mlp", num_classes=OLD, input_shape=SHAPE, rng=jax.random.key(seed),
                         hidden=HIDDEN)
    old = train(init, None, objectives.cross_entropy(), data["train"]["task1"], seed=seed,
                **common)
    x1, y1 = data["test"]["task1"]
    results["task1"].append(float(np.mean(np.argmax(logits(old, x1), -1) == y1)))
    widened = models.from_linen(
        models.get_model("mlp", num_classes=OLD + NEW, hidden=HIDDEN),
        {"params": strategies.expand_head(old.params, NEW, head="head",
                                          rng=jax.random.key(seed + 1))})
    teacher = strategies.lwf_teacher(old, num_new=NEW)
    for name, weight in (("plain", 0.0), ("lwf", args.lwf_weight)):
      objective = strategies.lwf_objective(OLD, temperature=args.temperature, lwf_weight=weight)
      model = train(widened, teacher, objective, data["train"]["task2"], seed=seed + 1, **common)
      results[name].append(evaluate(model, data["test"]))
    p, l = results["plain"][-1], results["lwf"][-1]
    print(f"{seed:>4}  {results['task1'][-1]:>12.4f}  {p['old']:>8.4f} {p['new']:>8.4f} "
          f"{p['all']:>8.4f}  {l['old']:>8.4f} {l['new']:>8.4f} {l['all']:>8.4f}")

  def mean(name, key):
    return np.mean([r[key] for r in results[name]])

  print(f"{'mean':>4}  {np.mean(results['task1']):>12.4f}  {mean('plain', 'old'):>8.4f} "
        f"{mean('plain', 'new'):>8.4f} {mean('plain', 'all'):>8.4f}  {mean('lwf', 'old'):>8.4f} "
        f"{mean('lwf', 'new'):>8.4f} {mean('lwf', 'all'):>8.4f}")
  print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()

"""kdjax inside a hand-written JAX loop: train a teacher, then distil a student.

No kdjax training loop is used: the data is scikit-learn's bundled digits (offline), the models
are plain Flax Linen modules defined here, and every update is one call of the jitted
``kdjax.distill_step``. For each seed it prints the test accuracy of the teacher, of the student
trained alone and of the distilled student.

  python examples/research_loop.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kdjax
from kdjax import objectives


class MLP(nn.Module):
  hidden: tuple[int, ...]
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, name=f"dense_{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)


def load(seed: int, train_size: int):
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(x, y.astype(np.int32), test_size=0.2,
                                                      random_state=0, stratify=y)
  # The student sees only a labelled subset: the regime where a teacher's soft labels help most.
  rng = np.random.default_rng(seed)
  keep = rng.permutation(len(x_train))[:train_size]
  return (x_train, y_train), (x_train[keep], y_train[keep]), (x_test, y_test)


def batches(x, y, batch_size, steps, seed):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    yield {"image": x[idx], "label": y[idx]}


def train(student, teacher, objective, data, *, steps, batch_size, lr, seed):
  tx = optax.adam(lr)
  example = {"image": data[0][:batch_size], "label": data[1][:batch_size]}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                    rng=jax.random.key(seed), example_batch=example)
  step = jax.jit(kdjax.distill_step, donate_argnums=0)
  for batch in batches(*data, batch_size, steps, seed):
    state, metrics = step(state, batch)
  return state, float(metrics["loss"])


def accuracy(model_apply, params, model_state, x, y):
  out, _ = model_apply(params, model_state, x, train=False, rng=None)
  return float(jnp.mean(jnp.argmax(out.logits, -1) == y))


def init(module, seed):
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 64), jnp.float32))
  return kdjax.models.from_linen(module, variables)


def run(seed: int, args) -> dict[str, float]:
  full, subset, (x_test, y_test) = load(seed, args.train_size)
  ce = objectives.cross_entropy()

  teacher = init(MLP((256, 256)), 1000 + seed)
  t_state, _ = train(teacher, None, objectives.combine({"ce": ce}), full, steps=args.teacher_steps,
                     batch_size=64, lr=1e-3, seed=seed)
  teacher = kdjax.models.Model(teacher.apply, t_state.params["student"], t_state.student_state)

  alone = init(MLP((args.student_width,)), seed)
  s_state, _ = train(alone, None, objectives.combine({"ce": ce}), subset, steps=args.student_steps,
                     batch_size=64, lr=1e-3, seed=seed)
  kd_objective = objectives.combine({"ce": (ce, 1 - args.kd_weight),
                                     "kd": (objectives.kd(temperature=args.temperature),
                                            args.kd_weight)})
  d_state, _ = train(alone, teacher, kd_objective, subset, steps=args.student_steps,
                     batch_size=64, lr=1e-3, seed=seed)
  return {
      "teacher": accuracy(teacher.apply, teacher.params, teacher.model_state, x_test, y_test),
      "student": accuracy(alone.apply, s_state.params["student"], s_state.student_state, x_test,
                          y_test),
      "student_kd": accuracy(alone.apply, d_state.params["student"], d_state.student_state,
                             x_test, y_test),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--train_size", type=int, default=200)
  parser.add_argument("--teacher_steps", type=int, default=1500)
  parser.add_argument("--student_steps", type=int, default=1000)
  parser.add_argument("--student_width", type=int, default=32)
  parser.add_argument("--temperature", type=float, default=4.0)
  parser.add_argument("--kd_weight", type=float, default=0.9)
  args = parser.parse_args()
  start = time.time()
  rows = [run(seed, args) for seed in args.seeds]
  print(f"{'seed':>4}  {'teacher':>8}  {'student':>8}  {'student_kd':>10}")
  for seed, r in zip(args.seeds, rows):
    print(f"{seed:>4}  {r['teacher']:8.4f}  {r['student']:8.4f}  {r['student_kd']:10.4f}")
  gains = np.array([r["student_kd"] - r["student"] for r in rows])
  print(f"distillation gain: {100 * gains.mean():+.2f} ± {100 * gains.std():.2f} points "
        f"over {len(rows)} seeds ({time.time() - start:.0f}s)")


if __name__ == "__main__":
  main()

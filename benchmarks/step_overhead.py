"""Overhead of ``jax.jit(kdjax.distill_step)`` against a hand-fused jitted step.

The hand-fused step, written here with Flax and optax only, does the same work: teacher forward
(inference mode, no gradient), student forward/backward with BatchNorm statistics updated,
0.1 * CE + 0.9 * KD (T = 4, scaled by T^2), SGD with momentum. Both are timed in interleaved
repetitions in one process; each line printed is JSON:

  {"pair": ..., "kdjax_ms": ..., "fused_ms": ..., "ratio": ...}

  python benchmarks/step_overhead.py               # resnet32x4 -> resnet8x4 and an MLP pair
  python benchmarks/step_overhead.py --pairs mlp --repeats 20

With ``--checked`` it compares ``jax.jit(kdjax.checked(kdjax.distill_step))`` (run-time value
checks, see ``kdjax/_checked.py``) with the plain jitted step instead, each called and its loss
fetched every step as a training loop does:

  {"pair": ..., "plain_ms": ..., "checked_ms": ..., "ratio": ...}

  python benchmarks/step_overhead.py --checked
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import models, objectives

PAIRS = {
    # name: (teacher, student, input shape, classes)
    "resnet32x4->resnet8x4": ("resnet32x4", "resnet8x4", (32, 32, 3), 100),
    "mlp": ("mlp", "mlp", (32, 32, 3), 100),
}
MODEL_KWARGS = {"mlp": {}}
TEMPERATURE = 4.0


def fused_step_fn(t_module, s_module, tx):
  """The same distillation step written directly against Flax and optax."""
  T = TEMPERATURE

  def step(carry, teacher_vars, batch):
    s_params, s_stats, opt_state = carry
    t_logits = t_module.apply(teacher_vars, batch["image"], train=False)
    t_logits = jax.lax.stop_gradient(t_logits.astype(jnp.float32))

    def loss_fn(p):
      logits, updates = s_module.apply({"params": p, **s_stats}, batch["image"], train=True,
                                       mutable=list(s_stats))
      logits = logits.astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      log_ps = jax.nn.log_softmax(logits / T)
      log_pt = jax.nn.log_softmax(t_logits / T)
      kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1).mean() * T**2
      return 0.1 * ce + 0.9 * kl, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(s_params)
    upd, opt_state = tx.update(grads, opt_state, s_params)
    return (optax.apply_updates(s_params, upd), updates, opt_state), loss

  return jax.jit(step, donate_argnums=0)


def timed(fn, n):
  start = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n * 1e3


def _setup(pair: str, batch_size: int):
  t_name, s_name, shape, classes = PAIRS[pair]
  t_kwargs = MODEL_KWARGS.get(t_name, {})
  s_kwargs = {"hidden": (256,)} if s_name == "mlp" else {}
  if t_name == "mlp":
    t_kwargs = {"hidden": (1024, 1024)}
  rng = jax.random.key(0)
  teacher = models.create(t_name, num_classes=classes, input_shape=shape, rng=rng, **t_kwargs)
  student = models.create(s_name, num_classes=classes, input_shape=shape,
                          rng=jax.random.key(1), **s_kwargs)
  t_module = models.get_model(t_name, num_classes=classes, **t_kwargs)
  s_module = models.get_model(s_name, num_classes=classes, **s_kwargs)
  tx = optax.sgd(0.05, momentum=0.9)
  data_rng = np.random.default_rng(0)
  batch = {"image": data_rng.standard_normal((batch_size, *shape)).astype(np.float32),
           "label": data_rng.integers(0, classes, batch_size).astype(np.int32)}
  batch = jax.device_put(batch)

  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                  "kd": (objectives.kd(temperature=TEMPERATURE), 0.9)})
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                    rng=jax.random.key(2), example_batch=batch)
  return teacher, student, t_module, s_module, tx, batch, state


def _interleaved(fn_a, fn_b, repeats: int, iters: int) -> tuple[float, float]:
  timed(fn_a, 2)  # compile + warm up
  timed(fn_b, 2)
  a_ms, b_ms = [], []
  for _ in range(repeats):  # interleaved so drifts in machine load hit both alike
    a_ms.append(timed(fn_a, iters))
    b_ms.append(timed(fn_b, iters))
  return float(np.median(a_ms)), float(np.median(b_ms))


def bench_checked(pair: str, batch_size: int, repeats: int, iters: int) -> dict:
  """The plain jitted step against the checked one (both donate the state)."""
  _, _, _, _, _, batch, state = _setup(pair, batch_size)
  plain = jax.jit(kdjax.distill_step, donate_argnums=0)
  checked = jax.jit(kdjax.checked(kdjax.distill_step), donate_argnums=0)
  holder = {"plain": state, "checked": jax.tree.map(jnp.copy, state)}

  def run(name, step):
    def fn():
      holder[name], m = step(holder[name], batch)
      # Not read here: the plain step keeps dispatching ahead, while the checked one reads its
      # error flag on every step; that difference is part of its cost.
      return m["loss"]
    return fn

  plain_ms, checked_ms = _interleaved(run("plain", plain), run("checked", checked), repeats,
                                      iters)
  return {"pair": pair, "batch_size": batch_size, "device": jax.devices()[0].platform,
          "plain_ms": round(plain_ms, 3), "checked_ms": round(checked_ms, 3),
          "ratio": round(checked_ms / plain_ms, 4), "repeats": repeats, "iters": iters}


def bench(pair: str, batch_size: int, repeats: int, iters: int) -> dict:
  teacher, student, t_module, s_module, tx, batch, state = _setup(pair, batch_size)
  kd_step = jax.jit(kdjax.distill_step, donate_argnums=0)

  fused = fused_step_fn(t_module, s_module, tx)
  teacher_vars = {"params": teacher.params, **teacher.model_state}
  carry = (student.params, student.model_state, tx.init(student.params))
  carry = jax.tree.map(jnp.array, carry)

  holder = {"state": state, "carry": carry}

  def run_kdjax():
    holder["state"], m = kd_step(holder["state"], batch)
    return m["loss"]

  def run_fused():
    holder["carry"], loss = fused(holder["carry"], teacher_vars, batch)
    return loss

  kd, fu = _interleaved(run_kdjax, run_fused, repeats, iters)
  return {"pair": pair, "batch_size": batch_size, "device": jax.devices()[0].platform,
          "kdjax_ms": round(kd, 3), "fused_ms": round(fu, 3), "ratio": round(kd / fu, 4),
          "repeats": repeats, "iters": iters}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--checked", action="store_true",
                      help="compare kdjax.checked(distill_step) with the plain step")
  args = parser.parse_args()
  fn = bench_checked if args.checked else bench
  for pair in args.pairs:
    print(json.dumps(fn(pair, args.batch_size, args.repeats, args.iters)), flush=True)


if __name__ == "__main__":
  main()

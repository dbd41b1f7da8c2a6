"""Distil a character-level Transformer language model, offline, on a CPU.

The text is a fixed list of modules from the Python standard library's own source (about 320 KB,
read from ``os.path.dirname(os.__file__)``; the exact text, and so the numbers, depend on the
Python version). Bytes are the tokens. For each seed the script trains

* a teacher ``transformer_lm`` (d_model 128, 3 layers) with next-token cross-entropy,
* a student (d_model 64, 1 layer) alone, with the same loss and the same number of steps,
* the same student distilled: ``0.5 * CE + 0.5 * token KD`` (T = 1), teacher run inside the step,
* the same student distilled from a cached top-k teacher (``TeacherCache``, k = 8, no teacher
  forward during training),

and prints each one's validation perplexity (the last 10% of the text). Every update is one call
of the jitted ``kdjax.distill_step``.

  python examples/lm_distill.py --seeds 0 1
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax

import kdjax
from kdjax import lm
from kdjax import models

# Modules present (as single files) in every Python 3.9-3.13 standard library.
SOURCES = ("textwrap.py", "string.py", "random.py", "functools.py", "os.py", "contextlib.py",
           "heapq.py", "copy.py", "abc.py", "tempfile.py", "fractions.py", "calendar.py",
           "json/decoder.py", "json/encoder.py", "bisect.py")


def load_text() -> bytes:
  root = os.path.dirname(os.__file__)
  parts = []
  for name in SOURCES:
    with open(os.path.join(root, name), "rb") as f:
      parts.append(f.read())
  return b"\n".join(parts)


def build_data(length: int):
  text = np.frombuffer(load_text(), np.uint8)
  vocab, stream = np.unique(text, return_inverse=True)  # ids of the bytes that occur, sorted
  split = int(0.9 * len(stream))
  train = lm.sequence_windows(stream[:split], length)
  valid = lm.sequence_windows(stream[split:], length)
  return train, valid, len(vocab), len(text)


def make_lm(vocab: int, length: int, d_model: int, n_layers: int, seed: int):
  return models.create("transformer_lm", num_classes=vocab, input_shape=(length,),
                       rng=jax.random.key(seed), vocab_size=vocab, d_model=d_model,
                       n_layers=n_layers, n_heads=4, max_len=length, dropout_rate=0.0)


def train(student, teacher, objective, data, *, steps, batch_size, lr, seed):
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps), b2=0.98,
                   weight_decay=0.01)
  it = lm.batches(data, batch_size, seed=seed)
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                    rng=jax.random.key(seed), example_batch=next(it),
                                    input_key="tokens", label_key="targets")
  step = jax.jit(kdjax.distill_step)
  for _ in range(steps):
    state, metrics = step(state, next(it))
  jax.block_until_ready(metrics)
  return state


def run(seed: int, args, train_data, valid_data, vocab):
  L = args.length
  kw = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed)
  ce = lm.token_cross_entropy_term()
  results, times = {}, {}

  def valid_ppl(model, state):
    return lm.perplexity(model, valid_data, params=state.params["student"],
                         model_state=state.student_state, batch_size=128)

  t0 = time.time()
  teacher = make_lm(vocab, L, args.teacher_width, args.teacher_layers, seed)
  state = train(teacher, None, ce, train_data, **{**kw, "steps": args.teacher_steps})
  teacher = models.Model(apply=teacher.apply, params=state.params["student"],
                         model_state=state.student_state, name="teacher")
  results["teacher"], times["teacher"] = valid_ppl(teacher, state), time.time() - t0

  def student():
    return make_lm(vocab, L, args.student_width, args.student_layers, seed + 1000)

  t0 = time.time()
  s = student()
  results["student alone"] = valid_ppl(s, train(s, None, ce, train_data, **kw))
  times["student alone"] = time.time() - t0

  t0 = time.time()
  s = student()
  kd = kdjax.objectives.combine({"ce": (ce, 1.0 - args.alpha),
                                 "kd": (lm.token_kd_term(args.temperature), args.alpha)})
  results["student KD"] = valid_ppl(s, train(s, teacher, kd, train_data, **kw))
  times["student KD"] = time.time() - t0

  if args.topk:
    t0 = time.time()
    cache = lm.TeacherCache.build(teacher, train_data["tokens"], args.topk, batch_size=128)
    s = student()
    sparse = kdjax.objectives.combine({"ce": (ce, 1.0 - args.alpha),
                                       "kd": (cache.term(temperature=args.temperature),
                                              args.alpha)})
    results[f"student top-{args.topk} cached KD"] = valid_ppl(
        s, train(s, None, sparse, cache.attach(train_data), **kw))
    times[f"student top-{args.topk} cached KD"] = time.time() - t0
  return results, times


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--teacher_width", type=int, default=128)
  parser.add_argument("--teacher_layers", type=int, default=3)
  parser.add_argument("--teacher_steps", type=int, default=600)
  parser.add_argument("--student_width", type=int, default=64)
  parser.add_argument("--student_layers", type=int, default=1)
  parser.add_argument("--steps", type=int, default=300, help="student steps")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--alpha", type=float, default=0.5, help="weight of the KD term")
  parser.add_argument("--topk", type=int, default=8, help="0 skips the cached top-k run")
  args = parser.parse_args()

  start, cpu_start = time.time(), time.process_time()
  train_data, valid_data, vocab, n_bytes = build_data(args.length)
  print(f"text: {n_bytes} bytes, vocab {vocab}, {len(train_data['tokens'])} train / "
        f"{len(valid_data['tokens'])} validation windows of {args.length}; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  table = {}
  for seed in args.seeds:
    results, times = run(seed, args, train_data, valid_data, vocab)
    for name, ppl in results.items():
      table.setdefault(name, []).append(ppl)
      print(f"seed {seed}  {name:<26} validation perplexity {ppl:7.3f}  ({times[name]:5.1f} s)",
            flush=True)
  print("mean over seeds " + ", ".join(str(s) for s in args.seeds) + ":")
  for name, ppls in table.items():
    print(f"  {name:<26} {np.mean(ppls):7.3f}")
  better = all(kd < alone for kd, alone in zip(table["student KD"], table["student alone"]))
  print(f"distilled student better than student alone on every seed: {better}")
  print(f"total wall time {time.time() - start:.1f} s, process CPU time "
        f"{time.process_time() - cpu_start:.1f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
  main()

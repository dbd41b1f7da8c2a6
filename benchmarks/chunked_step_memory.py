"""Temporary memory of a whole ``kdjax.distill_step`` with a chunked LM objective.

Two decoders from the zoo (one layer, hidden 64) distil with ``lm.chunked_kd_term`` (no
cross-entropy on the logits), and the step's compiled temporaries are compared with the size of
one float32 ``[batch, length, vocab]`` logits array and with the same step under the plain
(full-logits) ``kd`` term. The step's accuracy and agreement come from the hidden states and
heads block by block (``kdjax.step.predictions``), so nothing in the chunked step needs the
logits whole. Compiled for this machine's CPU and, with the ``plan`` extra, for a compile-only
H100 (nothing runs). One JSON line per (device, objective)::

  python benchmarks/chunked_step_memory.py                  # 8 x 1024 tokens, vocabulary 32768
  python benchmarks/chunked_step_memory.py --batch 4 --length 512 --vocab 16384
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import lm, models, objectives


def _state(objective, vocab, length, batch):
  taps = ("pre_logits", "head")
  make = lambda seed: models.create(  # noqa: E731
      "decoder", num_classes=vocab, input_shape=(length,), rng=jax.random.key(seed), taps=taps,
      hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
      intermediate_size=128)
  return kdjax.DistillState.create(
      student=make(1), teacher=make(0), objective=objectives.combine({"kd": objective}),
      tx=optax.sgd(0.1), rng=jax.random.key(0), example_batch=batch, input_key="tokens",
      label_key="targets")


def _devices():
  yield "cpu", None
  try:
    from kdjax import plan  # pylint: disable=g-import-not-at-top
    yield "h100 (compile-only)", plan.get_topology("h100:1x2").devices[0]
  except Exception as e:  # pylint: disable=broad-except  # no plan extra
    print(json.dumps({"device": "h100 (compile-only)", "skipped": str(e).splitlines()[0]}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--chunk_size", type=int, default=256)
  args = parser.parse_args()
  b, n, v = args.batch, args.length, args.vocab
  batch = {"tokens": np.zeros((b, n), np.int32), "targets": np.zeros((b, n), np.int32),
           "mask": np.ones((b, n), bool)}
  terms = {"chunked": lm.chunked_kd_term(chunk_size=args.chunk_size),
           "plain": objectives.kd(temperature=1.0)}
  logits_mib = b * n * v * 4 / 2**20
  for device, at in _devices():
    for name, term in terms.items():
      state = _state(term, v, n, batch)
      state_in, batch_in = state, batch
      if at is not None:
        sharding = jax.sharding.SingleDeviceSharding(at)
        place = lambda x: jax.ShapeDtypeStruct(  # noqa: E731
            np.shape(x), jnp.asarray(x).dtype, sharding=sharding)
        state_in, batch_in = jax.tree.map(place, state), jax.tree.map(place, batch)
      compiled = jax.jit(kdjax.distill_step).lower(state_in, batch_in).compile()
      temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
      print(json.dumps({"device": device, "objective": name, "tokens": b * n, "vocab": v,
                        "temp_mib": round(temp, 1), "logits_mib": round(logits_mib, 1),
                        "temp_over_logits": round(temp / logits_mib, 3)}), flush=True)


if __name__ == "__main__":
  main()

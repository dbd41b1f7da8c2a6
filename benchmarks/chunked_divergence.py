"""Memory and time of ``kdjax.lm.chunked_divergence`` against the plain full-logits loss.

Both compute the value and the gradient (student hidden states and head; the teacher is held
fixed with ``stop_gradient``, as in a distillation step) of the generalized JSD between
``softmax(h_t W_t / T)`` and ``softmax(h_s W_s / T)`` for ``tokens`` positions:

* plain: ``losses.generalized_jsd(h_s @ W_s, h_t @ W_t)``: both ``[tokens, vocab]`` logits whole;
* chunked: ``lm.chunked_divergence(h_s, W_s, h_t, W_t, chunk_size=...)``.

It prints one JSON line per variant: the compiled program's temporary memory
(``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``), the median time of a
call after compilation, and finally the memory ratio and the largest value/gradient difference::

  python benchmarks/chunked_divergence.py                       # 8192 tokens, 256, 32768
  python benchmarks/chunked_divergence.py --tokens 2048 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import lm, losses


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, default=8192)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--chunk_size", type=int, default=512)
  parser.add_argument("--beta", type=float, default=0.5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  n, d, v = args.tokens, args.hidden, args.vocab
  keys = jax.random.split(jax.random.key(0), 4)
  hs, ht = (jax.random.normal(k, (n, d), jnp.float32) for k in keys[:2])
  ws, wt = (jax.random.normal(k, (d, v), jnp.float32) * d**-0.5 for k in keys[2:])

  def plain(hs, ws, ht, wt):
    return losses.generalized_jsd(hs @ ws, jax.lax.stop_gradient(ht @ wt), beta=args.beta)

  def chunked(hs, ws, ht, wt):
    return lm.chunked_divergence(hs, ws, jax.lax.stop_gradient(ht), jax.lax.stop_gradient(wt),
                                 beta=args.beta, chunk_size=args.chunk_size)

  results, temps = {}, {}
  for name, f in (("plain", plain), ("chunked", chunked)):
    compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(hs, ws, ht, wt).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    out = jax.block_until_ready(compiled(hs, ws, ht, wt))
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(hs, ws, ht, wt))
      times.append(time.perf_counter() - start)
    results[name], temps[name] = out, temp
    print(json.dumps({"variant": name, "tokens": n, "hidden": d, "vocab": v,
                      "chunk_size": args.chunk_size if name == "chunked" else None,
                      "temp_bytes": int(temp), "temp_mib": round(temp / 2**20, 1),
                      "median_s": round(float(np.median(times)), 4),
                      "device": jax.devices()[0].device_kind}), flush=True)
  (v1, g1), (v2, g2) = results["plain"], results["chunked"]
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip((v1, *g1), (v2, *g2)))
  print(json.dumps({"temp_ratio": round(temps["plain"] / max(temps["chunked"], 1), 2),
                    "value_plain": float(v1), "value_chunked": float(v2),
                    "max_abs_diff": diff}))


if __name__ == "__main__":
  main()

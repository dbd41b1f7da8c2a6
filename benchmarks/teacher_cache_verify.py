"""What checking a teacher cache's checksums costs when it is opened, against reading it.

Writes a teacher cache of CIFAR-100's shape (``--replay_epochs`` x 50,000 examples x ``--k``
values, float16, with int16 indices for top-k) in the on-disk format of
:mod:`kdjax.teacher_cache` (the arrays are random: the check's cost does not depend on the
values), then times, best of ``--repeats``:

* ``open_s``: :func:`kdjax.teacher_cache.load_teacher_cache`, which verifies every part's CRC-32;
* ``read_s``: one pass over the same arrays without checksums (``np.sum`` of each part), the
  least a run that touches every cached value reads anyway;
* ``epoch_lookup_s``: the lookups of one student epoch at ``--batch_size`` (what the cached run
  does with the cache per epoch, besides the student's own step).

The file is in the page cache after the first pass, as it is for a run that reopens it; prints
one JSON line.

  python benchmarks/teacher_cache_verify.py                      # top-10 of 100 classes, 8 epochs
  python benchmarks/teacher_cache_verify.py --k 0                # all 100 logits
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from kdjax import teacher_cache
from kdjax.teacher_cache import _store


def write_cache(directory: str, *, replay_epochs: int, num_examples: int, num_classes: int,
                k: int, chunk_size: int) -> None:
  rng = np.random.default_rng(0)
  full = k == 0
  k = num_classes if full else k
  shape = (replay_epochs, num_examples, k)
  values = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
  np.save(os.path.join(directory, "values.npy"), values)
  arrays = {"values": values}
  if not full:
    indices = rng.integers(0, num_classes, shape).astype(np.int16)
    np.save(os.path.join(directory, "indices.npy"), indices)
    arrays["indices"] = indices
  meta = {"format": _store._FORMAT_VERSION,  # pylint: disable=protected-access
          "complete": True, "fingerprint": "benchmark",
          "replay_epochs": replay_epochs, "num_examples": num_examples,
          "num_classes": num_classes, "k": k, "full": full, "mode": "renormalize",
          "temperature": 1.0, "values_dtype": "float16", "indices_dtype": "int16",
          "views": {}, "teacher": {}}
  meta["checksums"] = {"algorithm": "crc32", "chunk_size": chunk_size}
  for kind, array in arrays.items():
    parts = _store._parts(meta)  # pylint: disable=protected-access
    meta["checksums"][kind] = [_store.part_checksum(array[r, lo:hi]) for r, lo, hi in parts]
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump(meta, f)


def best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replay_epochs", type=int, default=8)
  parser.add_argument("--num_examples", type=int, default=50_000)
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--k", type=int, default=10, help="0: all logits")
  parser.add_argument("--chunk_size", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as directory:
    write_cache(directory, replay_epochs=args.replay_epochs, num_examples=args.num_examples,
                num_classes=args.num_classes, k=args.k, chunk_size=args.chunk_size)
    cache = teacher_cache.load_teacher_cache(directory)
    nbytes = cache.values.nbytes + (0 if cache.indices is None else cache.indices.nbytes)
    open_s = best(lambda: teacher_cache.load_teacher_cache(directory), args.repeats)

    def read():
      for array in (cache.values, cache.indices):
        if array is None:
          continue
        for r in range(array.shape[0]):
          for lo in range(0, array.shape[1], args.chunk_size):
            np.sum(array[r, lo:lo + args.chunk_size], dtype=np.float32)

    read_s = best(read, args.repeats)
    order = np.random.default_rng(1).permutation(args.num_examples)

    def epoch():
      for start in range(0, args.num_examples - args.batch_size + 1, args.batch_size):
        rows = order[start:start + args.batch_size]
        cache.lookup(rows, np.zeros_like(rows))

    epoch_s = best(epoch, 1)
  print(json.dumps({"cache_mb": round(nbytes / 1e6, 1), "replay_epochs": args.replay_epochs,
                    "num_examples": args.num_examples, "k": args.k or args.num_classes,
                    "open_s": round(open_s, 3), "read_s": round(read_s, 3),
                    "epoch_lookup_s": round(epoch_s, 3),
                    "verify_mb_per_s": round(nbytes / 1e6 / open_s, 0)}))


if __name__ == "__main__":
  main()

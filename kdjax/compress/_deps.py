"""The optional deployment dependencies, imported on first use with a message naming the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

_PIP_NAMES = {"qwix": "qwix", "jax2onnx": "jax2onnx", "onnx": "onnx",
              "onnxruntime": "onnxruntime"}


def require(module: str) -> ModuleType:
  """Imports ``module`` (one of qwix, jax2onnx, onnx, onnxruntime) or raises an ImportError
  that says how to install kdjax's ``deploy`` extra."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(
        f"{module} is not installed ({e}); kdjax's quantization and export need the deploy extra: "
        f"pip install -e \".[deploy]\" (from a kdjax checkout) or pip install "
        f"\"kdjax[deploy]\"; it installs {', '.join(sorted(set(_PIP_NAMES.values())))}") from None

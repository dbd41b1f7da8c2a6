"""kdjax: knowledge distillation for JAX.

The functional core: ``kdjax.distill_step(state, batch) -> (state, metrics)`` with a
``kdjax.DistillState`` built from any Flax Linen / NNX module or plain apply function, objectives
composed from ``kdjax.objectives`` and losses from ``kdjax.losses``.

Every subpackage is an attribute of ``kdjax``: the core (``losses``, ``objectives``, ``models``,
``step``) is imported with ``kdjax``, the others on first use (``kdjax.parallel``,
``kdjax.train``, ...), so ``import kdjax`` stays light and no layer imports one above it.
"""
import importlib as _importlib

from kdjax import _native_stderr  # noqa: F401  (first: `import jax` without CUDA-stub noise)
from kdjax import losses
from kdjax import models
from kdjax import objectives
from kdjax import step
from kdjax._checked import checked
from kdjax.step import DistillState
from kdjax.step import distill_step
from kdjax.step import eval_step

__version__ = "0.1.0"

# Imported on first attribute access (PEP 562).
_LAZY = ("compress", "configs", "data", "export", "lm", "metrics", "parallel", "plan", "report",
         "strategies", "teacher_cache", "testing", "train", "workdir")

__all__ = (
    "DistillState",
    "checked",
    "distill_step",
    "eval_step",
    "losses",
    "models",
    "objectives",
    "step",
) + _LAZY


def __getattr__(name: str):
  if name in _LAZY:
    module = _importlib.import_module(f"kdjax.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module 'kdjax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))

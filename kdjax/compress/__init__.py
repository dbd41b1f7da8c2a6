"""Compression after (and during) distillation: pruning masks and quantized models.

* Pruning: :func:`magnitude_pruning`, an optax transformation (Zhu & Gupta's gradual schedule,
  unstructured or N:M) whose state holds the masks; chain it after any optimizer.
* Quantization (qwix; ``pip install -e ".[deploy]"``): :func:`qat` wraps a model into its
  fake-quantized twin for quantization-aware distillation, :func:`ptq` stores a trained model's
  weights as integers.

See ``docs/deploy.md``.
"""
from kdjax.compress._deps import require
from kdjax.compress._pruning import MagnitudePruningState
from kdjax.compress._pruning import apply_masks
from kdjax.compress._pruning import count_nonzero
from kdjax.compress._pruning import count_params
from kdjax.compress._pruning import magnitude_pruning
from kdjax.compress._pruning import param_path
from kdjax.compress._pruning import polynomial_sparsity
from kdjax.compress._pruning import pruning_masks
from kdjax.compress._pruning import sparsity_report
from kdjax.compress._quantize import ptq
from kdjax.compress._quantize import qat
from kdjax.compress._quantize import quantization_rules

__all__ = (
    "MagnitudePruningState",
    "apply_masks",
    "count_nonzero",
    "count_params",
    "magnitude_pruning",
    "param_path",
    "polynomial_sparsity",
    "pruning_masks",
    "ptq",
    "qat",
    "quantization_rules",
    "require",
    "sparsity_report",
)

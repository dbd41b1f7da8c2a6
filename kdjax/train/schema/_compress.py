"""``config.compress`` (the pruned and int8 students after distillation) and ``config.export``."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from kdjax import export
from kdjax.train.errors import ConfigError
from kdjax.train.schema._base import Section, check_choice, check_int, is_number, key, names
from kdjax.train.schema._base import require

QUANTIZATIONS = ("none", "ptq", "qat")
# config name -> the structure arguments of kdjax.compress.magnitude_pruning.
PRUNE_STRUCTURES = {"unstructured": {}, "2:4": {"structure": "n:m", "n": 2, "m": 4}}
WEIGHT_BITS = (8, 4)
ACT_BITS = (8, 4, 0)


def _check_patterns(patterns: Any, path: str, what: str) -> None:
  require(isinstance(patterns, tuple) and all(isinstance(p, str) for p in patterns),
          f"config.{path} must be a tuple of regular expressions over {what}, got {patterns!r}")
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise ConfigError(f"config.{path} holds {p!r}, which is not a regular expression "
                        f"({e}); fix or remove it") from None


@dataclasses.dataclass(frozen=True)
class Compress(Section):
  """Runs after ``student_kd`` that prune and quantize the distilled student while it keeps
  distilling from the teacher."""

  pruning: float = key(0.0, "target sparsity of the `student_kd_pruned` run (0: no pruning run)")
  prune_structure: str = key("unstructured", f"one of {names(PRUNE_STRUCTURES)}")
  prune_begin: int = key(0, "first pruning step of the run")
  prune_end: int = key(0, "the step the target sparsity is reached (0: 3/4 of the run)")
  prune_frequency: int = key(10, "steps between mask updates")
  keep_dense: tuple = key((), "regexes of student parameter paths left dense (e.g. `'head/.*'`)")
  quantization: str = key("none", "`none`, `ptq` or `qat`: the `student_kd_int8` run")
  weight_bits: int = key(8, "8 or 4")
  act_bits: int = key(8, "8, 4 or 0 (float activations)")
  keep_float: tuple = key((), "regexes of module paths left in float")
  steps: int = key(0, "steps of each compression run (0: `total_steps`)")

  @property
  def prunes(self) -> bool:
    """Whether the config adds the ``student_kd_pruned`` run."""
    return self.pruning > 0 or self.prune_structure != "unstructured"

  def check(self, path: str, root: Any) -> None:
    check_choice(self.quantization, f"{path}.quantization", QUANTIZATIONS)
    require(is_number(self.pruning) and 0.0 <= self.pruning < 1.0,
            f"config.{path}.pruning={self.pruning!r} is a target sparsity in [0, 1)")
    check_choice(self.prune_structure, f"{path}.prune_structure", PRUNE_STRUCTURES)
    check_int(self.prune_begin, f"{path}.prune_begin", minimum=0)
    check_int(self.prune_end, f"{path}.prune_end", minimum=0)
    check_int(self.prune_frequency, f"{path}.prune_frequency", minimum=1)
    check_int(self.steps, f"{path}.steps", minimum=0)
    require(self.weight_bits in WEIGHT_BITS,
            f"config.{path}.weight_bits={self.weight_bits!r}; use one of {WEIGHT_BITS}")
    require(self.act_bits in ACT_BITS,
            f"config.{path}.act_bits={self.act_bits!r}; use one of {ACT_BITS} (0: float "
            "activations)")
    _check_patterns(self.keep_dense, f"{path}.keep_dense", "student parameter paths")
    _check_patterns(self.keep_float, f"{path}.keep_float", "module paths")
    if self.prunes:
      run = self.steps or root.total_steps
      end = self.prune_end or max(1, (3 * run) // 4)
      where = f"config.{path}.steps" if self.steps else "config.total_steps"
      require(end <= run, f"config.{path}.prune_end={self.prune_end} is beyond the pruning run's "
              f"last step {run} ({where}); set it to at most {run} (or 0: 3/4 of the run)")
      require(self.prune_begin < end,
              f"config.{path}.prune_begin={self.prune_begin} must come before the step the "
              f"target is reached ({end}); lower it or raise config.{path}.prune_end")


# The export format of a decoder written as a Hugging Face directory (kdjax.models.save_hf).
HF_FORMAT = "hf"
EXPORT_FORMATS = (*export.FORMATS, HF_FORMAT)


@dataclasses.dataclass(frozen=True)
class Export(Section):
  """Export of the students after the runs (``kdjax.export``)."""

  formats: tuple = key((), f"formats among {names(EXPORT_FORMATS)} (`()`: no export; `hf`: a "
                           "decoder as a Hugging Face directory, `kdjax.models.save_hf`)")
  batch_size: int = key(0, "the exported batch size (0: a symbolic batch dimension)")

  def check(self, path: str, root: Any) -> None:
    unknown = [f for f in self.formats if f not in EXPORT_FORMATS] if isinstance(
        self.formats, tuple) else [self.formats]
    require(not unknown, f"config.{path}.formats={self.formats!r} names {unknown}; use a tuple "
            f"of {EXPORT_FORMATS}")
    check_int(self.batch_size, f"{path}.batch_size", minimum=0)

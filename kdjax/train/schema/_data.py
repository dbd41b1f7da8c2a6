"""``config.data``: the dataset, its splits, loading and the training augmentation."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from kdjax.train.schema._base import Section, check_int, is_int, is_number, key, require, section


def tokenizer_file(path: str) -> str:
  """The ``tokenizer.json`` that ``config.data.tokenizer`` names (a file, or a directory's)."""
  return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


@dataclasses.dataclass(frozen=True)
class Augment(Section):
  """Training augmentation, applied once per example: teacher and student see the same view."""

  crop_padding: int = key(0, "random crops after padding by this many pixels (0: off)")
  flip: bool = key(False, "random horizontal flips")
  mixup_alpha: float = key(0.0, "mixup's Beta(alpha, alpha) (0: off)")
  cutmix_alpha: float = key(0.0, "CutMix's Beta(alpha, alpha) (0: off; not with mixup)")

  def check(self, path: str, root: Any) -> None:
    require(is_int(self.crop_padding) and self.crop_padding >= 0,
            f"config.{path}.crop_padding must be an integer >= 0, got {self.crop_padding!r}")
    for name in ("mixup_alpha", "cutmix_alpha"):
      v = getattr(self, name)
      require(is_number(v) and v >= 0, f"config.{path}.{name} must be >= 0 (0: off), got {v!r}")
    require(not (self.mixup_alpha > 0 and self.cutmix_alpha > 0),
            f"config.{path}: mixup_alpha and cutmix_alpha are both set; set one to 0")


@dataclasses.dataclass(frozen=True)
class Degrade(Section):
  """A degraded view of every training and evaluation example, `image_degraded`, made from
  the same augmented `image` (``kdjax.data.DegradeOptions``): for a model that sees less."""

  downsample: int = key(1, "average blocks of this many pixels a side (1: off)")
  mask_fraction: float = key(0.0, "share of pixels set to 0 at random (0: off)")

  def check(self, path: str, root: Any) -> None:
    check_int(self.downsample, f"{path}.downsample")
    require(is_number(self.mask_fraction) and 0 <= self.mask_fraction < 1,
            f"config.{path}.mask_fraction must be in [0, 1) (0: off), got {self.mask_fraction!r}")


@dataclasses.dataclass(frozen=True)
class Data(Section):
  """The dataset (``kdjax.data``) and how it is read."""

  name: str = key("digits", "`digits`, `synthetic`, `tfds:<name>[:<config>]`, `text:stdlib`, "
                            "`text:stdlib_corpus`, `folder:<dir>` (see `kdjax.data`)")
  data_dir: str = key("", "TFDS data directory (`''`: the TFDS default)", runtime=True)
  train_split: str = key("train", "the training split")
  eval_split: str = key("", "`''`: the dataset's evaluation split (test where there is one)")
  eval_batch_size: int = key(512, "global; a multiple of the device count", runtime=True)
  worker_count: int = key(0, "grain worker processes (0: load in the main process)",
                          runtime=True)
  standardize: bool = key(False, "subtract the per-channel mean, divide by the std")
  sequence_length: int = key(64, "text datasets: tokens per training window")
  tokenizer: str = key("", "text datasets: a Hugging Face `tokenizer.json`, or a model directory "
                           "holding one (`''`: bytes are the tokens)")
  image_size: int = key(0, "`folder:<dir>` datasets: resize images to this size (0: as stored)")
  augment: Augment = section(Augment)
  degrade: Degrade = section(Degrade)

  def check(self, path: str, root: Any) -> None:
    require(isinstance(self.name, str) and self.name,
            f"config.{path}.name must name a dataset (e.g. 'digits' or 'tfds:cifar100'), got "
            f"{self.name!r}")
    check_int(self.eval_batch_size, f"{path}.eval_batch_size")
    check_int(self.worker_count, f"{path}.worker_count", minimum=0)
    check_int(self.sequence_length, f"{path}.sequence_length")
    require(isinstance(self.tokenizer, str),
            f"config.{path}.tokenizer must be a path (or '' for bytes), got {self.tokenizer!r}")
    if self.tokenizer:
      require(self.name.startswith("text:"),
              f"config.{path}.tokenizer is set but config.{path}.name={self.name!r} is not a "
              "text dataset; set config.data.tokenizer='' or use a 'text:...' dataset")
      # A path that does not exist yet is checked when the data is read.
      require(not os.path.exists(self.tokenizer) or os.path.isfile(tokenizer_file(self.tokenizer)),
              f"config.{path}.tokenizer={self.tokenizer!r}: {tokenizer_file(self.tokenizer)} "
              "does not exist; point it at a tokenizer.json or a directory holding one")
    check_int(self.image_size, f"{path}.image_size", minimum=0)
    self.augment.check(f"{path}.augment", root)
    self.degrade.check(f"{path}.degrade", root)

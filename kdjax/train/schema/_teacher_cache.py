"""``config.teacher_cache``: distill runs read the teacher's outputs from a cache built once."""
from __future__ import annotations

import dataclasses
from typing import Any

from kdjax import lm
from kdjax import losses
from kdjax import teacher_cache
from kdjax.train.schema._base import Section, check_choice, check_int, key, names, require


@dataclasses.dataclass(frozen=True)
class TeacherCache(Section):
  """The offline teacher (``kdjax.teacher_cache``): the training step runs no teacher forward."""

  enabled: bool = key(False, "distill runs read the teacher from a cache")
  replay_epochs: int = key(4, "distinct augmented views per example (epoch `e` shows view "
                              "`e mod replay_epochs`; images only)")
  targets: str = key("topk", "what is cached: `topk` (the teacher's largest logits) or `sampled` "
                            "(language models: `k` entries per token sampled from the teacher, "
                            "weighted by its renormalised probabilities, Gemma 3)")
  k: int = key(0, "top-k logits kept per view or token (0: all of them; exact KD); entries "
                  "sampled per token for `targets='sampled'`")
  weighting: str = key("renormalized", "weights of sampled entries: `renormalized` (Gemma 3) or "
                                       "`unbiased`")
  values_dtype: str = key("float16", f"one of {names(teacher_cache.VALUE_DTYPES)}")
  mode: str = key("renormalize", "`renormalize` (raw logits, any temperature) or `remainder`")
  batch_size: int = key(0, "examples per teacher forward while building (0: "
                           "`data.eval_batch_size`)", runtime=True)
  chunk_size: int = key(0, "examples per resumable unit of the build (0: 8 x `batch_size`)",
                        runtime=True)
  dir: str = key("", "where caches go, one subdirectory per teacher run; `''`: "
                     "`WORKDIR/teacher_cache`", runtime=True)
  on_stale: str = key("rebuild", "a cache of another teacher or other settings: `rebuild` it or "
                                 "stop with an `error`", runtime=True)

  def check(self, path: str, root: Any) -> None:
    require(isinstance(self.enabled, bool),
            f"config.{path}.enabled must be True or False, got {self.enabled!r}")
    check_int(self.replay_epochs, f"{path}.replay_epochs")
    for name in ("k", "batch_size", "chunk_size"):
      check_int(getattr(self, name), f"{path}.{name}", minimum=0)
    check_choice(self.targets, f"{path}.targets", teacher_cache.TARGETS)
    check_choice(self.weighting, f"{path}.weighting", lm.SAMPLED_WEIGHTINGS)
    require(not (self.enabled and self.targets == "sampled" and self.k == 0),
            f"config.{path}.targets='sampled' needs config.{path}.k >= 1 (the entries sampled "
            "per token); set it, e.g. config.teacher_cache.k=8")
    check_choice(self.values_dtype, f"{path}.values_dtype", teacher_cache.VALUE_DTYPES)
    check_choice(self.mode, f"{path}.mode", losses.SPARSE_MODES)
    check_choice(self.on_stale, f"{path}.on_stale", teacher_cache.ON_STALE)
    augment = root.data.augment
    require(not (self.enabled and (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0)),
            f"config.{path}.enabled=True with mixup / CutMix: a mixed view depends on its batch "
            "partner, so the teacher's outputs on it cannot be cached; set "
            "config.data.augment.mixup_alpha and cutmix_alpha to 0 or turn the teacher cache off")

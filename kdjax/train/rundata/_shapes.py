"""The dataset facts a run is built from, whatever the modality."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The dataset facts a run is built from."""

  num_classes: int
  input_shape: tuple[int, ...]
  num_train: int
  input_key: str = "image"
  label_key: str = "label"
  input_dtype: Any = jnp.float32

"""Model sections: ``config.teacher``, ``config.student`` and each entry of ``config.models``."""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import jax.numpy as jnp
import ml_collections

from kdjax import models
from kdjax.train.errors import ConfigError
from kdjax.train.schema._base import Row, Section, check_int, is_int, key, names, require
from kdjax.train.schema._base import section
from kdjax.train.schema._optimizer import Optimizer

# Compute dtypes by config name (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The dtypes a model read from a Hugging Face directory computes in (``kdjax.models.from_hf``).
HF_DTYPES = ("float32", "bfloat16")


def hf_config(path: Any) -> dict[str, Any] | None:
  """The ``config.json`` of the Hugging Face model directory ``path``, or ``None`` when ``path``
  is not one (a directory is one when its ``config.json`` has a ``model_type``)."""
  if not isinstance(path, str) or not path:
    return None
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    return None
  try:
    with open(file, encoding="utf-8") as f:
      values = json.load(f)
  except (OSError, ValueError):
    return None
  return values if isinstance(values, dict) and "model_type" in values else None


def suggest(name: str, known: Sequence[str]) -> str:
  """`` (did you mean 'x'?)`` for the closest of ``known``, or ``''``."""
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def check_model_name(name: Any, path: str) -> None:
  """``config.<path>`` must name a model: a zoo name, a name registered with
  :func:`kdjax.models.register` or a ``'package.module:Attr'`` spec."""
  try:
    models.check_model(name, key=f"config.{path}")
  except ValueError as e:
    raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class Model(Section):
  """A model: a zoo name, its extra arguments, its class count and compute dtype."""

  FREE_FORM = ("model_kwargs",)

  model: str = key("mlp", "a zoo name (`kdjax.models.available_models()`), a name registered "
                              "with `kdjax.models.register`, or `'package.module:Attr'`")
  model_kwargs: dict = key({}, "extra arguments of `kdjax.models.create` (e.g. "
                               "`{'hidden': (64,)}`)")
  num_classes: int | None = key(None, "None: the dataset's class count; any other value must "
                                      "equal it", placeholder=int)
  dtype: str = key("float32", f"compute dtype: {names(DTYPES)}")
  remat: bool = key(False, "rematerialise each block in the backward pass: less activation "
                           "memory for about one more forward pass, the same values; for the "
                           "zoo's Transformers (`kdjax.models.zoo.REMAT_MODELS`) and Hugging "
                           "Face decoders", runtime=True)
  init: str = key("", "a Hugging Face model directory (`config.json` + safetensors) to build "
                      "the model from: its architecture and weights (`kdjax.models.from_hf`), "
                      "no `model` needed; `''`: initialise from the seed")
  input_key: str = key("", "the batch entry the model reads (`''`: the dataset's input, "
                          "`image`); e.g. `image_degraded` with `data.degrade`")

  def hf_source(self) -> tuple[str, str] | None:
    """``(key, directory)`` of the Hugging Face directory this model is read from, if any."""
    return ("init", self.init) if hf_config(self.init) is not None else None

  def check(self, path: str, root: Any) -> None:
    require(isinstance(self.init, str),
            f"config.{path}.init must be a path (or '' to initialise), got {self.init!r}")
    # A path that does not exist yet is checked when the model is built (a config may be
    # resolved, e.g. planned, where its directories are not).
    require(not self.init or not os.path.exists(self.init) or hf_config(self.init) is not None,
            f"config.{path}.init={self.init!r} is not a Hugging Face model directory (no "
            "config.json with a model_type there); point it at one or set it to ''")
    source = self.hf_source()
    if source is None:
      check_model_name(self.model, f"{path}.model")
    else:
      _check_hf(self, path, *source)
    require(not self.remat or source is not None or self.model in models.zoo.REMAT_MODELS,
            f"config.{path}.remat=True: model {self.model!r} has no rematerialised blocks (they "
            f"are in {', '.join(models.zoo.REMAT_MODELS)} and Hugging Face decoders); set "
            f"config.{path}.remat=False")
    require(isinstance(self.input_key, str),
            f"config.{path}.input_key must name a batch entry (or '' for the dataset's input), "
            f"got {self.input_key!r}")
    require(self.dtype in DTYPES,
            f"config.{path}.dtype={self.dtype!r} is not supported; use one of {tuple(DTYPES)}")
    require(self.num_classes is None or (is_int(self.num_classes) and self.num_classes > 0),
            f"config.{path}.num_classes must be a positive integer or None (the dataset's), got "
            f"{self.num_classes!r}")


@dataclasses.dataclass(frozen=True)
class Teacher(Model):
  """The teacher: a model, its steps and optimizer (following the students' until set), or a
  trained checkpoint to load."""

  model: str = key("cnn_small", "as `student.model`")
  total_steps: int = key(1000, "follows `total_steps` until a config sets it",
                         shown="`total_steps`")
  checkpoint: str = key("", "a trained teacher to load: a run directory (`OTHER/teacher`), its "
                            "`checkpoints/` or one `checkpoints/<step>/`, or a Hugging Face "
                            "model directory (`kdjax.models.from_hf`); `''` trains it in "
                            "`WORKDIR/teacher`")
  optimizer: Optimizer = section(Optimizer)

  @classmethod
  def rows(cls, prefix: str = "", runtime: bool = False) -> Iterator[Row]:
    for row in super().rows(prefix, runtime):
      if row.key.startswith(f"{prefix}optimizer."):
        name = row.key.removeprefix(prefix)
        row = Row(row.key, f"`{name}`", f"follows `{name}` until a config sets it", runtime)
      yield row

  def check(self, path: str, root: Any) -> None:
    super().check(path, root)
    check_int(self.total_steps, f"{path}.total_steps")
    require(isinstance(self.checkpoint, str),
            f"config.{path}.checkpoint must be a path (or '' to train the teacher), got "
            f"{self.checkpoint!r}")
    require(not (self.init and self.checkpoint),
            f"config.{path}.init and config.{path}.checkpoint are both set; set checkpoint to "
            "load a trained teacher, or init to train one from a Hugging Face directory")

  def hf_source(self) -> tuple[str, str] | None:
    if hf_config(self.checkpoint) is not None:
      return "checkpoint", self.checkpoint
    return super().hf_source()


def _check_hf(section: Model, path: str, key_name: str, directory: str) -> None:
  """A model read from a Hugging Face directory: the other keys must agree with it."""
  family = hf_config(directory)["model_type"]
  where = f"config.{path}.{key_name}={directory!r}"
  require(family in models.HF_ARCHITECTURES,
          f"{where} holds a {family!r} model; kdjax reads {sorted(models.HF_ARCHITECTURES)} "
          "Hugging Face directories")
  default = type(section).__dataclass_fields__["model"].default
  require(section.model in (default, family),
          f"config.{path}.model={section.model!r} but {where} is a Hugging Face {family!r} "
          f"model; leave config.{path}.model unset (or set it to {family!r})")
  require(not section.model_kwargs,
          f"config.{path}.model_kwargs={dict(section.model_kwargs)!r} but the architecture comes "
          f"from {where}; remove config.{path}.model_kwargs")
  require(section.dtype in HF_DTYPES,
          f"config.{path}.dtype={section.dtype!r}: a model read from a Hugging Face directory "
          f"computes in one of {HF_DTYPES}")


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(Model))


def model_section(spec: Mapping[str, Any], name: str) -> ml_collections.ConfigDict:
  """``config.models.<name>`` (``{model, model_kwargs, num_classes, dtype}``), checked, with
  the defaults of the keys it leaves out."""
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  unknown = sorted(set(spec) - set(MODEL_KEYS))
  if unknown or not spec.get("model"):
    raise ConfigError(f"config.models.{name} must be a mapping with a 'model' and optionally "
                      f"{sorted(set(MODEL_KEYS) - {'model'})}; got {spec!r}")
  values = {**Model.defaults().to_dict(), **spec}
  Model.parse(values).check(f"models.{name}", None)
  return ml_collections.ConfigDict(values)

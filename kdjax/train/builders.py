"""From config to parts: models, optimizers with their learning-rate schedules, objectives.

The names a config may use (dtypes, optimizers, schedules, term kinds) and their checks belong to
:mod:`kdjax.train.schema`; the builders look them up there. What only building can tell (a model
argument the model does not take, a tap it does not have) raises :class:`ConfigError` naming the
config key to change.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from kdjax import models
from kdjax import objectives
from kdjax.train import schema
from kdjax.train.config import plain
from kdjax.train.errors import ConfigError


# Models ---------------------------------------------------------------------------------------


def make_model(model_config: Any, *, side: str, input_shape: Sequence[int], rng: jax.Array,
               taps: Sequence[str] = (), bn_axis_name: str | None = None) -> models.Model:
  """The model ``config.<side>`` describes, initialised from ``rng``, tapping ``taps``.

  ``bn_axis_name``: the ``pmap`` axis the model will train under, so that its BatchNorm layers
  normalise with the statistics of the global batch (as they do under ``jit``, where the batch
  axis is one logical array); ``None`` for ``jit``.
  """
  source = hf_source(model_config)
  if source is not None:
    return _from_hf(model_config, side, *source, taps=taps)
  init = model_config.get("init", "")
  if init:
    raise ConfigError(f"config.{side}.init={init!r} is not a Hugging Face model directory (no "
                      "config.json with a model_type there); point it at one or set it to ''")
  schema.check_model_name(model_config.model, f"{side}.model")
  kwargs = plain(model_config.model_kwargs) or {}
  if model_config.get("remat"):
    kwargs = {**kwargs, "remat": True}
  if bn_axis_name is not None:
    kwargs = {**kwargs, "bn_axis_name": bn_axis_name}
  try:
    return models.create(model_config.model, num_classes=model_config.num_classes,
                         input_shape=tuple(input_shape), rng=rng, taps=tuple(taps),
                         dtype=schema.DTYPES[model_config.dtype], **kwargs)
  except TypeError as e:
    raise ConfigError(f"config.{side}.model_kwargs={kwargs} do not fit model "
                      f"{model_config.model!r} ({e}); remove or rename the offending keys") from None
  except ValueError as e:
    if "tap" in str(e):
      raise ConfigError(f"config.objective asks model {model_config.model!r} "
                        f"(config.{side}.model) for features it cannot tap: {e}") from None
    raise ConfigError(f"config.{side}: cannot build model {model_config.model!r}: {e}") from None


def hf_source(model_config: Any) -> tuple[str, str] | None:
  """``(key, directory)`` when ``config.<side>`` is read from a Hugging Face directory: the
  teacher's ``checkpoint`` or any section's ``init`` (:func:`kdjax.train.schema.hf_config`)."""
  for key in ("checkpoint", "init"):
    directory = model_config.get(key, "")
    if schema.hf_config(directory) is not None:
      return key, directory
  return None


def model_name(model_config: Any) -> str:
  """How results name ``config.<side>``'s model: its ``model``, or the ``model_type`` of the
  Hugging Face directory it is read from (``'llama'``, ``'qwen3'``, ...)."""
  source = hf_source(model_config)
  return model_config.model if source is None else schema.hf_config(source[1])["model_type"]


def _from_hf(model_config: Any, side: str, key: str, directory: str, *,
             taps: Sequence[str]) -> models.Model:
  where = f"config.{side}.{key}={directory!r}"
  vocab = schema.hf_config(directory).get("vocab_size")
  if model_config.num_classes is not None and vocab != model_config.num_classes:
    raise ConfigError(f"{where} predicts {vocab} tokens but the data's vocabulary has "
                      f"{model_config.num_classes} (config.data.name, config.data.tokenizer); "
                      "tokenize with the model's own tokenizer (config.data.tokenizer=<its "
                      "directory>)")
  try:
    return models.from_hf(directory, dtype=schema.DTYPES[model_config.dtype], taps=tuple(taps),
                          remat=bool(model_config.get("remat")))
  except (ValueError, FileNotFoundError) as e:
    if "tap" in str(e):
      raise ConfigError(f"config.objective asks the model of {where} for features it cannot "
                        f"tap: {e}") from None
    raise ConfigError(f"{where}: {e}") from None


# Optimizers -----------------------------------------------------------------------------------


def learning_rate_schedule(opt: Any, *, total_steps: int,
                           steps_per_epoch: float) -> optax.Schedule:
  """Linear warm-up (``warmup_steps``) followed by a cosine, step or constant schedule.

  ``step`` multiplies the rate by ``decay_factor`` after each boundary, given in steps
  (``decay_steps``) or epochs (``decay_epochs``, converted with ``steps_per_epoch``); boundaries
  count from the start of training, warm-up included.
  """
  lr = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  main = schema.SCHEDULES[opt.schedule](opt, lr, total_steps, warmup, steps_per_epoch)
  if warmup:
    main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return _float_count(main)


def _float_count(schedule: optax.Schedule) -> optax.Schedule:
  # optax compares the step count with Python floats; a float32 count keeps that valid under
  # strict dtype promotion (and is exact up to 2**24 steps).
  return lambda count: schedule(jnp.asarray(count, jnp.float32))


def make_optimizer(opt: Any, *, total_steps: int,
                   steps_per_epoch: float) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation ``opt`` (``config.optimizer``) describes, and its schedule."""
  schedule = learning_rate_schedule(opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  parts = []
  if opt.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  parts.extend(schema.OPTIMIZERS[opt.name](opt, schedule))
  return optax.chain(*parts), schedule


# Objectives -----------------------------------------------------------------------------------


def make_objective(spec: Mapping[str, Any], *, supplied: Mapping[str, Any] | None = None,
                   stages: Sequence[Mapping[str, Any]] = ()) -> objectives.Term:
  """The combined objective of ``config.objective``: ``{name: {kind, weight, warmup_steps, ...}}``.

  A term with ``warmup_steps > 0`` has its weight ramped linearly from 0 over that many steps
  (DKD's warm-up). ``supplied`` holds the values the run supplies for the arguments a kind
  declares as ``dataset_args`` (``num_data``: the training split's size, for CRD's memory
  banks; ``num_classes``; ``teacher_model``), used when the config leaves them out. The
  objective's ``needs`` then say which taps and batch keys it reads.

  ``stages`` (``config.stages``) splits training into consecutive stages, each
  ``{"steps": n, "terms": (names...)}``: during a stage only the listed terms count (the others
  have weight 0); a last stage with ``steps`` 0 runs to the end. Empty: one stage, every term.
  """
  spec = plain(spec)
  supplied = dict(supplied or {})
  schema.check_objective(spec)
  gates = stage_gates(stages, tuple(spec))
  terms = {}
  for name, term_spec in spec.items():
    term_kind, kwargs = schema.term_parts(name, term_spec)
    for arg in term_kind.dataset_args:
      if arg not in kwargs:
        if supplied.get(arg) is None:
          raise ConfigError(f"config.objective.{name}: term kind {term_spec['kind']!r} needs "
                            f"{arg}, which this run cannot supply; set it in the term's config")
        kwargs[arg] = supplied[arg]
    try:
      term = term_kind.ctor(**kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.objective.{name}: {e}") from None
    weight = float(term_spec.get("weight", 1.0))
    warmup = int(term_spec.get("warmup_steps", 0))
    schedule = optax.linear_schedule(0.0, weight, warmup) if warmup else None
    if name in gates:
      schedule = _gated(schedule or optax.constant_schedule(weight), *gates[name])
    terms[name] = (term, _float_count(schedule) if schedule else weight)
  try:
    return objectives.combine(terms)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.objective: {e}") from None


def stage_gates(stages: Sequence[Mapping[str, Any]],
                names: Sequence[str]) -> dict[str, tuple[tuple[int, ...], tuple[bool, ...]]]:
  """Per term, the stage boundaries (first step of stages 2..K) and whether it counts in each.

  Empty when there are no stages. Raises :class:`ConfigError` for stages that
  :func:`kdjax.train.schema.check_stages` rejects (e.g. one naming an unknown term).
  """
  stages = tuple(plain(s) for s in stages)
  schema.check_stages(stages, names)
  if not stages:
    return {}
  bounds, step = [], 0
  for i, stage in enumerate(stages):
    step += int(stage["steps"])
    if i < len(stages) - 1:
      bounds.append(step)
  return {name: (tuple(bounds), tuple(name in s["terms"] for s in stages)) for name in names}


def _gated(schedule: optax.Schedule, bounds: Sequence[int],
           active: Sequence[bool]) -> optax.Schedule:
  bounds_arr = jnp.asarray(bounds, jnp.float32)
  active_arr = jnp.asarray(active, jnp.float32)

  def gated(count):
    stage = jnp.searchsorted(bounds_arr, count, side="right")
    return schedule(count) * active_arr[stage]

  return gated


def supervised_objective(label_key: str = "label") -> objectives.Term:
  """Hard-label cross-entropy: the teacher's and the baseline student's objective."""
  return objectives.combine({"ce": objectives.cross_entropy(label_key=label_key)})

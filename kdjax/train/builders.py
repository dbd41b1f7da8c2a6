"""From config to parts: models, optimizers with their learning-rate schedules, objectives.

Every builder raises :class:`ConfigError` naming the config key to change when a value cannot be
used (an unknown model or term, a model argument it does not take).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax import models
from kdjax import objectives
from kdjax import strategies  # noqa: F401  (registers the crd, vid and review_kd kinds)
from kdjax.train import checks as config_checks
from kdjax.train import config as config_lib
from kdjax.train.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Keys of a term's config that are not arguments of its constructor.
TERM_KEYS = ("kind", "weight", "warmup_steps")


def _suggest(name: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def plain(value: Any) -> Any:
  """A ConfigDict (or mapping) as plain dicts, lists as tuples."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(value)
  return value


# Models ---------------------------------------------------------------------------------------


MODEL_KEYS = {"model": None, "model_kwargs": {}, "num_classes": None, "dtype": "float32"}


def model_section(spec: Mapping[str, Any], name: str) -> ml_collections.ConfigDict:
  """A model section of ``config.models`` (``{model, model_kwargs, num_classes, dtype}``)."""
  spec = plain(spec)
  unknown = sorted(set(spec) - set(MODEL_KEYS))
  if unknown or not spec.get("model"):
    raise ConfigError(f"config.models.{name} must be a mapping with a 'model' and optionally "
                      f"{sorted(set(MODEL_KEYS) - {'model'})}; got {spec!r}")
  if spec.get("dtype", "float32") not in DTYPES:
    raise ConfigError(f"config.models.{name}.dtype={spec['dtype']!r}; use one of {list(DTYPES)}")
  return ml_collections.ConfigDict({**MODEL_KEYS, **spec})


def check_model_name(name: str, side: str) -> None:
  available = tuple(models.available_models())
  if name not in available:
    raise ConfigError(f"config.{side}.model={name!r} is not a kdjax model{_suggest(name, available)}; "
                      f"available: {', '.join(available)}")


def make_model(model_config: Any, *, side: str, input_shape: Sequence[int], rng: jax.Array,
               taps: Sequence[str] = (), bn_axis_name: str | None = None) -> models.Model:
  """The model ``config.<side>`` describes, initialised from ``rng``, tapping ``taps``.

  ``bn_axis_name``: the ``pmap`` axis the model will train under, so that its BatchNorm layers
  normalise with the statistics of the global batch (as they do under ``jit``, where the batch
  axis is one logical array); ``None`` for ``jit``.
  """
  check_model_name(model_config.model, side)
  kwargs = plain(model_config.model_kwargs) or {}
  if bn_axis_name is not None:
    kwargs = {**kwargs, "bn_axis_name": bn_axis_name}
  try:
    return models.create(model_config.model, num_classes=model_config.num_classes,
                         input_shape=tuple(input_shape), rng=rng, taps=tuple(taps),
                         dtype=DTYPES[model_config.dtype], **kwargs)
  except TypeError as e:
    raise ConfigError(f"config.{side}.model_kwargs={kwargs} do not fit model "
                      f"{model_config.model!r} ({e}); remove or rename the offending keys") from None
  except ValueError as e:
    if "tap" in str(e):
      raise ConfigError(f"config.objective asks model {model_config.model!r} "
                        f"(config.{side}.model) for features it cannot tap: {e}") from None
    raise ConfigError(f"config.{side}: cannot build model {model_config.model!r}: {e}") from None


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
  if opt.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps=max(total_steps - warmup, 1),
                                       alpha=float(opt.min_learning_rate) / lr)
  elif opt.schedule == "step":
    if opt.decay_steps:
      bounds = [int(b) for b in opt.decay_steps]
    else:
      bounds = [int(round(e * steps_per_epoch)) for e in opt.decay_epochs]
    scales: dict[int, float] = {}
    for b in bounds:
      b = max(b - warmup, 0)
      scales[b] = scales.get(b, 1.0) * float(opt.decay_factor)
    main = optax.piecewise_constant_schedule(lr, scales)
  else:
    raise ConfigError(f"unknown learning-rate schedule {opt.schedule!r}; use cosine, step or "
                      "constant")
  if warmup:
    main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return _float_count(main)


def _float_count(schedule: optax.Schedule) -> optax.Schedule:
  # optax compares the step count with Python floats; a float32 count keeps that valid under
  # strict dtype promotion (and is exact up to 2**24 steps).
  return lambda count: schedule(jnp.asarray(count, jnp.float32))


def _decay_mask(params: Any) -> Any:
  # Weight decay on kernels only: biases and normalisation scales/offsets have ndim < 2.
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(opt: Any, *, total_steps: int,
                   steps_per_epoch: float) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation ``opt`` (``config.optimizer``) describes, and its schedule."""
  schedule = learning_rate_schedule(opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  parts = []
  if opt.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  if opt.name == "adamw":
    parts.append(optax.adamw(schedule, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                             weight_decay=float(opt.weight_decay), mask=_decay_mask))
  elif opt.name in ("sgd", "momentum", "nesterov"):
    if opt.weight_decay:
      parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=_decay_mask))
    momentum = None if opt.name == "sgd" else float(opt.momentum)
    parts.append(optax.sgd(schedule, momentum=momentum, nesterov=opt.name == "nesterov"))
  else:
    raise ConfigError(f"unknown optimizer {opt.name!r}; use sgd, momentum, nesterov or adamw")
  return optax.chain(*parts), schedule


# Objectives -----------------------------------------------------------------------------------


def _term_parts(name: str, spec: Mapping[str, Any]) -> tuple[objectives.TermKind, dict[str, Any]]:
  """The registered kind of ``config.objective.<name>`` and its constructor arguments, checked."""
  kinds = objectives.term_kinds()
  kind = spec.get("kind")
  if kind not in kinds:
    raise ConfigError(f"config.objective.{name}.kind={kind!r} is not a kdjax objective term"
                      f"{_suggest(str(kind), tuple(kinds))}; available: {', '.join(kinds)}")
  term_kind = kinds[kind]
  kwargs = {k: v for k, v in spec.items() if k not in TERM_KEYS}
  params = inspect.signature(term_kind.ctor).parameters
  accepted = [p for p in params if params[p].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ConfigError(f"config.objective.{name}: term kind {kind!r} takes no argument(s) "
                      f"{unknown}{_suggest(unknown[0], accepted)}; its arguments are {accepted} "
                      f"(plus {list(TERM_KEYS)})")
  missing = sorted(p for p in accepted if params[p].default is inspect.Parameter.empty and
                   p not in kwargs and p not in term_kind.dataset_args)
  if missing:
    raise ConfigError(f"config.objective.{name}: term kind {kind!r} needs {missing} (e.g. "
                      f"student='stage2', teacher='stage3' tap paths for feature terms)")
  return term_kind, kwargs


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
  if not spec:
    raise ConfigError("config.objective needs at least one term, e.g. "
                      "{'ce': {'kind': 'cross_entropy', 'weight': 1.0}}")
  gates = stage_gates(stages, tuple(spec))
  terms = {}
  for name, term_spec in spec.items():
    term_kind, kwargs = _term_parts(name, term_spec)
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
  :func:`kdjax.train.config.check_stages` rejects (e.g. one naming an unknown term).
  """
  stages = tuple(plain(s) for s in stages)
  config_lib.check_stages(stages, names)
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

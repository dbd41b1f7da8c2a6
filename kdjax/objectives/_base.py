"""Terms: the unit of a distillation objective.

A term is a pair of pure functions, in the spirit of an optax ``GradientTransformation``::

  init(rng, student_out, teacher_out, batch) -> (params, state)
  apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None)
      -> (loss, new_state, metrics)

``params`` are trainable adapters (FitNets regressors, projections) that the step optimises
together with the student; ``state`` is non-trainable (memory banks, running buffers) and is
threaded through the step. ``student_out`` / ``teacher_out`` are :class:`kdjax.models.Outputs`
(``teacher_out`` is ``None`` when there is no teacher). ``axis_name`` is set when the step runs
under ``pmap``; batch-level terms then gather their inputs across devices so they see the same
global batch as under ``jit``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

# The one masked mean, shared with the losses: ``masked_mean(values, batch, mask_key)`` reads
# ``batch[mask_key]``, ``masked_mean(values, mask)`` takes the mask itself.
from kdjax.losses import masked_mean  # noqa: F401  (re-exported as kdjax.objectives.masked_mean)

PyTree = Any
Schedule = Callable[[jax.Array], jax.Array]
Weight = Union[float, Schedule]


class Needs(NamedTuple):
  """What a term reads besides the logits, declared as data so the run layer never guesses.

  Attributes:
    student: feature tap paths the term reads from the student's outputs.
    teacher: feature tap paths the term reads from the teacher's outputs.
    batch: batch keys the term reads (``label``, ``index``, ``mask``, cached teacher logits...).
    teacher_outputs: whether the term reads the live teacher's outputs (logits or features) in
      the step; ``False`` for terms of the student alone or of teacher outputs read from the
      batch (a teacher cache), which then train with no teacher forward. Unless a term says
      otherwise it is assumed to read them.
  """

  student: tuple[str, ...] = ()
  teacher: tuple[str, ...] = ()
  batch: tuple[str, ...] = ()
  teacher_outputs: bool = True

  def merge(self, *others: "Needs") -> "Needs":
    """The union of several terms' needs: taps and keys in first-seen order; the teacher's
    outputs when any of them reads them."""
    out = self
    for other in others:
      out = Needs(*(tuple(dict.fromkeys(a + b)) for a, b in zip(out[:3], other[:3])),
                  teacher_outputs=out.teacher_outputs or other.teacher_outputs)
    return out


def taps_of(keys: Any) -> tuple[str, ...]:
  """The tap paths among term keys: strings other than ``'logits'`` (callables read no tap)."""
  return tuple(k for k in as_tuple(keys or ()) if isinstance(k, str) and k != "logits")


class Term(NamedTuple):
  """A distillation objective term: ``init`` and ``apply``, both pure, and what it ``needs``."""

  init: Callable[..., tuple[PyTree, PyTree]]
  apply: Callable[..., tuple[jax.Array, PyTree, dict[str, jax.Array]]]
  needs: Needs = Needs()


def no_params_init(rng, student_out, teacher_out, batch):
  """``init`` for terms without adapters or state."""
  del rng, student_out, teacher_out, batch
  return {}, {}


def select(outputs, key: str | Callable[[Any], jax.Array], *, side: str) -> jax.Array:
  """Reads ``'logits'`` or a tapped feature (by its tap path) from model outputs."""
  if callable(key):
    return key(outputs)
  if outputs is None:
    raise ValueError(f"this term needs {side} outputs but there is no {side}; "
                     "give the state a teacher (DistillState.create(teacher=...)) or use a "
                     "term that needs only the student")
  if key == "logits":
    return outputs.logits
  features = outputs.features
  if key not in features:
    raise ValueError(
        f"this term needs the {side} feature {key!r}, but the {side} taps only "
        f"{sorted(features)}; add {key!r} to the {side} model's taps "
        f"(e.g. models.create(..., taps=({key!r},)))")
  return features[key]


def require_batch_keys(batch: Mapping[str, Any], keys: Sequence[str], fix: str) -> None:
  """Refuses a batch without one of the ``keys`` a term reads; ``fix`` says what attaches them."""
  for key in keys:
    if key not in batch:
      raise ValueError(f"the batch has no {key!r} entry (it has {sorted(batch)}); {fix}")


def as_tuple(keys: str | Sequence[str]) -> tuple[str, ...]:
  return (keys,) if isinstance(keys, str) or callable(keys) else tuple(keys)


def gather_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Concatenates ``x`` along its leading (batch) axis across the devices of ``axis_name``.

  Differentiable: under ``pmap`` the transpose of ``all_gather`` scatters the cotangent back to
  each device's own slice, so a loss computed on the gathered batch (and the gradient ``pmean``
  the step applies) gives the same update as the same loss on the global batch under ``jit``.
  """
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def combine(terms: Mapping[str, Term | tuple[Term, Weight]]) -> Term:
  """Combines named terms into one objective: ``loss = sum_i w_i(step) * loss_i``.

  Args:
    terms: ``{name: term}`` or ``{name: (term, weight)}``; a weight is a non-negative float or an
      optax schedule ``step -> weight`` (e.g. ``optax.linear_schedule(0., 1., 1000)`` for DKD's
      warm-up).

  Returns:
    A term whose params and state are dicts keyed by term name. Its metrics hold ``loss`` (the
    weighted total), each term's unweighted loss under its name, scheduled weights under
    ``'<name>/weight'`` and each term's own metrics under ``'<name>/<metric>'``.
  """
  if not terms:
    raise ValueError("an objective needs at least one term, e.g. {'ce': objectives.cross_entropy()}")
  parsed: dict[str, tuple[Term, Weight]] = {}
  for name, spec in terms.items():
    term, weight = spec if isinstance(spec, tuple) and not isinstance(spec, Term) else (spec, 1.0)
    if not isinstance(term, Term):
      raise TypeError(f"objective term {name!r} is a {type(term).__name__}, not a Term; build it "
                      "with kdjax.objectives (e.g. objectives.kd(temperature=4.0))")
    if not callable(weight):
      weight = float(weight)
      if weight < 0 or weight != weight:
        raise ValueError(f"the weight of objective term {name!r} is {weight}; loss weights must be "
                         ">= 0 (set a non-negative weight or drop the term)")
    parsed[name] = (term, weight)

  def init(rng, student_out, teacher_out, batch):
    params, state = {}, {}
    for (name, (term, _)), key in zip(parsed.items(), jax.random.split(rng, len(parsed))):
      params[name], state[name] = term.init(key, student_out, teacher_out, batch)
    return params, state

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    total = jnp.zeros((), jnp.float32)
    new_state, metrics = {}, {}
    for name, (term, weight) in parsed.items():
      loss, new_state[name], term_metrics = term.apply(
          params[name], state[name], student_out, teacher_out, batch, step, axis_name=axis_name)
      loss = jnp.asarray(loss, jnp.float32)
      if callable(weight):
        w = jnp.asarray(weight(step), jnp.float32)
        metrics[f"{name}/weight"] = w
      else:
        w = weight
      total = total + w * loss
      metrics[name] = loss
      metrics.update({f"{name}/{k}": v for k, v in term_metrics.items()})
    metrics["loss"] = total
    return total, new_state, metrics

  needs = [term.needs for term, _ in parsed.values()]
  return Term(init, apply, needs[0].merge(*needs[1:]))

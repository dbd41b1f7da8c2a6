"""Several frozen teachers as one :class:`~kdjax.models.Model`.

The ensemble is an ordinary model whose ``params`` are the tuple of the teachers' params, so it
plugs into ``DistillState.create(teacher=...)`` and every teacher runs inside the one compiled
distillation step, under the step's ``stop_gradient`` like any single teacher.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import Model, Outputs

COMBINE_MODES = ("mean_logits", "mean_probs", "weighted", "confidence")
CONFIDENCE_MEASURES = ("max_prob", "neg_entropy")


def combine_logits(logits: Sequence[jax.Array], *, combine: str = "mean_logits",
                   weights: Sequence[float] | None = None,
                   confidence: str = "max_prob") -> jax.Array:
  r"""Combines the logits of several teachers into one set of logits.

  With teacher logits :math:`z_i` and probabilities :math:`p_i = \mathrm{softmax}(z_i)`:

  * ``'mean_logits'``: :math:`\frac1n \sum_i z_i`.
  * ``'mean_probs'``: :math:`\log \frac1n \sum_i p_i` (log of the averaged probabilities, so that
    a softmax of the result is the averaged distribution).
  * ``'weighted'``: :math:`\sum_i w_i z_i` with the given ``weights`` normalised to sum to 1.
  * ``'confidence'``: :math:`\sum_i c_i(x) z_i(x)`, a per-example weighting of the teachers by
    their own confidence, normalised over the teachers: ``confidence='max_prob'`` gives
    :math:`c_i = \max_k p_i[k] / \sum_j \max_k p_j[k]`; ``confidence='neg_entropy'`` gives
    :math:`c_i = \mathrm{softmax}_i(-H(p_i))` (a softmax because negative entropies are <= 0).

  Args:
    logits: one ``[..., num_classes]`` array per teacher, all of the same shape.
    combine: one of ``'mean_logits'``, ``'mean_probs'``, ``'weighted'``, ``'confidence'``.
    weights: one non-negative weight per teacher (``'weighted'`` only).
    confidence: ``'max_prob'`` or ``'neg_entropy'`` (``'confidence'`` only).

  Returns:
    The combined logits, ``[..., num_classes]``, float32.
  """
  shapes = {tuple(z.shape) for z in logits}
  if len(shapes) != 1:
    raise ValueError(f"the teachers' logits have different shapes {sorted(shapes)}; every teacher "
                     "of an ensemble must predict the same classes (same num_classes)")
  z = jnp.stack([jnp.asarray(x, jnp.float32) for x in logits])  # [n, ..., C]
  n = z.shape[0]
  if combine == "mean_logits":
    return jnp.mean(z, axis=0)
  if combine == "mean_probs":
    log_p = jax.nn.log_softmax(z, axis=-1)
    return jax.nn.logsumexp(log_p, axis=0) - jnp.log(jnp.float32(n))
  if combine == "weighted":
    w = jnp.asarray(_normalized_weights(weights, n), jnp.float32)
    return jnp.tensordot(w, z, axes=1)
  if combine == "confidence":
    log_p = jax.nn.log_softmax(z, axis=-1)
    if confidence == "max_prob":
      c = jnp.exp(jnp.max(log_p, axis=-1))  # [n, ...], in (0, 1]
      c = c / jnp.sum(c, axis=0, keepdims=True)
    elif confidence == "neg_entropy":
      neg_entropy = jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
      c = jax.nn.softmax(neg_entropy, axis=0)
    else:
      raise ValueError(f"confidence={confidence!r} is not one of {CONFIDENCE_MEASURES}")
    return jnp.sum(c[..., None] * z, axis=0)
  raise ValueError(f"combine={combine!r} is not one of {COMBINE_MODES}")


def _normalized_weights(weights, n: int) -> np.ndarray:
  if weights is None:
    raise ValueError("combine='weighted' needs weights=[w_0, ..., w_n-1], one per teacher")
  w = np.asarray(weights, np.float64)
  if w.shape != (n,):
    raise ValueError(f"weights has shape {w.shape} but there are {n} teachers; give one weight "
                     "per teacher")
  if not (np.all(w >= 0) and w.sum() > 0):
    raise ValueError(f"weights must be >= 0 and not all 0, got {list(w)}")
  return (w / w.sum()).astype(np.float32)


def ensemble_teacher(teachers: Sequence[Model], *, combine: str = "mean_logits",
                     weights: Sequence[float] | None = None, confidence: str = "max_prob",
                     name: str = "ensemble") -> Model:
  """Wraps several teachers into one :class:`~kdjax.models.Model`.

  Its ``params`` and ``model_state`` are tuples with one entry per teacher. Its logits are the
  teachers' logits combined as :func:`combine_logits` describes; its features hold every
  teacher's taps under ``'teacher_{i}/<tap>'`` and every teacher's own logits under
  ``'teacher_{i}/logits'``, so feature terms can read any one teacher.

  Args:
    teachers: the (trained) teacher models; at least one.
    combine: ``'mean_logits'``, ``'mean_probs'``, ``'weighted'`` or ``'confidence'``.
    weights: per-teacher weights for ``combine='weighted'``, normalised to sum to 1.
    confidence: ``'max_prob'`` or ``'neg_entropy'`` for ``combine='confidence'``.
    name: the model's name.

  Returns:
    A model usable as ``DistillState.create(teacher=...)``.

  Examples:
    >>> teacher = ensemble_teacher([resnet56, wrn40_2], combine='mean_probs')  # doctest: +SKIP
    >>> state = kdjax.DistillState.create(student=student, teacher=teacher, ...)  # doctest: +SKIP

  References:
    T. G. Dietterich, "Ensemble Methods in Machine Learning", 2000; S. You, C. Xu, C. Xu,
    D. Tao, "Learning from Multiple Teacher Networks", 2017.
  """
  teachers = tuple(teachers)
  if not teachers:
    raise ValueError("ensemble_teacher needs at least one teacher")
  for t in teachers:
    if not isinstance(t, Model):
      raise TypeError(f"ensemble members must be kdjax.models.Model objects, got "
                      f"{type(t).__name__}; wrap Flax modules with kdjax.models.from_linen")
  if combine not in COMBINE_MODES:
    raise ValueError(f"combine={combine!r} is not one of {COMBINE_MODES}")
  if combine == "weighted":
    _normalized_weights(weights, len(teachers))
  elif weights is not None:
    raise ValueError(f"weights are only used with combine='weighted', not {combine!r}")
  if confidence not in CONFIDENCE_MEASURES:
    raise ValueError(f"confidence={confidence!r} is not one of {CONFIDENCE_MEASURES}")
  applies = tuple(t.apply for t in teachers)

  def apply(params, model_state, inputs, *, train: bool, rng: jax.Array | None):
    outs, new_states = [], []
    for i, (member_apply, p, s) in enumerate(zip(applies, params, model_state)):
      key = None if rng is None else jax.random.fold_in(rng, i)
      out, new_s = member_apply(p, s, inputs, train=train, rng=key)
      outs.append(out)
      new_states.append(new_s)
    features = {}
    for i, out in enumerate(outs):
      features.update({f"teacher_{i}/{k}": v for k, v in out.features.items()})
      features[f"teacher_{i}/logits"] = out.logits
    logits = combine_logits([o.logits for o in outs], combine=combine, weights=weights,
                            confidence=confidence)
    return Outputs(logits=logits, features=features), tuple(new_states)

  taps = tuple(f"teacher_{i}/{tap}" for i, t in enumerate(teachers)
               for tap in (*t.taps, "logits"))
  return Model(apply=apply, params=tuple(t.params for t in teachers),
               model_state=tuple(t.model_state for t in teachers), taps=taps, name=name)

"""Learning without Forgetting: learn a new task while the old model guards the old outputs.

The design is one classifier with ``old_classes + new_classes`` outputs: the old model's
classifier is widened with :func:`expand_head` (old columns kept, new columns added), so the
student starts as the old model. On the new task's data, the frozen old model (the teacher,
wrapped by :func:`lwf_teacher`) supervises the student's old-class logits with KD, while
cross-entropy trains the new-class logits on the new labels. No old data is needed.

The whole thing runs through the ordinary ``DistillState`` / ``distill_step``::

  old = ...  # trained on task 1, old_classes outputs
  student = models.from_linen(Net(num_classes=old_classes + new_classes),
                              {'params': strategies.expand_head(old.params['params'], new_classes,
                                                                 head='head', rng=key)})
  state = kdjax.DistillState.create(student=student,
                                    teacher=strategies.lwf_teacher(old, num_new=new_classes),
                                    objective=strategies.lwf_objective(old_classes), ...)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.models import Model, Outputs
from kdjax.objectives import Term, combine, from_loss

PyTree = Any


def expand_head(params: PyTree, num_new: int, *, head: str = "head",
                rng: jax.Array | None = None) -> PyTree:
  """Widens a dense classifier in a params tree by ``num_new`` output classes.

  The old columns of ``kernel`` (``[..., features, old]``) and entries of ``bias`` are kept, so
  the widened model's first ``old`` logits equal the old model's; the new columns are zeros, or
  LeCun-normal draws from ``rng`` when one is given, and the new biases are zeros. Every other
  leaf is returned unchanged.

  Args:
    params: the old model's parameters (nested dicts, e.g. a Linen ``variables['params']``).
    num_new: the number of classes to add (> 0).
    head: the '/'-separated path of the classifier's parameter dict (e.g. ``'head'`` or
      ``'classifier/dense'``); it must hold a ``kernel`` and may hold a ``bias``.
    rng: initialises the new columns; ``None`` initialises them to zero.

  Returns:
    A new params tree for the same architecture built with ``old + num_new`` classes.
  """
  if num_new < 1:
    raise ValueError(f"num_new must be >= 1, got {num_new}")
  path = tuple(p for p in head.split("/") if p)
  node = params
  for i, key in enumerate(path):
    if not hasattr(node, "keys") or key not in node:
      where = "/".join(path[:i]) or "the top level"
      have = sorted(node.keys()) if hasattr(node, "keys") else type(node).__name__
      raise ValueError(f"the params have no {key!r} under {where} (found {have}); pass "
                       "head='<path/to/classifier>' naming the dense layer that outputs the logits")
    node = node[key]
  if not hasattr(node, "keys") or "kernel" not in node:
    raise ValueError(f"params[{head!r}] has no 'kernel'; head= must name a dense layer's params")
  kernel = jnp.asarray(node["kernel"])
  new_shape = (*kernel.shape[:-1], num_new)
  if rng is None:
    extra = jnp.zeros(new_shape, kernel.dtype)
  else:
    fan_in = 1
    for d in kernel.shape[:-1]:
      fan_in *= d
    extra = (jax.random.normal(rng, new_shape, jnp.float32) / jnp.sqrt(jnp.float32(fan_in)))
    extra = extra.astype(kernel.dtype)
  widened = dict(node)
  widened["kernel"] = jnp.concatenate([kernel, extra], axis=-1)
  if "bias" in node:
    bias = jnp.asarray(node["bias"])
    widened["bias"] = jnp.concatenate([bias, jnp.zeros((num_new,), bias.dtype)], axis=-1)
  return _replace_at(params, path, widened)


def _replace_at(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace_at(tree[path[0]], path[1:], value)
  return out


def lwf_teacher(old_model: Model, *, num_new: int) -> Model:
  """The old model as a teacher for the widened student.

  Its logits are the old model's followed by ``num_new`` entries of ``-inf`` (probability 0),
  so they have the student's class count (``DistillState`` checks that) and their first
  ``old`` entries are exactly the old model's logits, the only ones :func:`lwf_objective`
  reads. Features pass through unchanged.
  """
  if num_new < 1:
    raise ValueError(f"num_new must be >= 1, got {num_new}")

  def apply(params, model_state, inputs, *, train, rng):
    out, new_state = old_model.apply(params, model_state, inputs, train=train, rng=rng)
    pad = jnp.full((*out.logits.shape[:-1], num_new), -jnp.inf, out.logits.dtype)
    return Outputs(logits=jnp.concatenate([out.logits, pad], axis=-1),
                   features=out.features), new_state

  return Model(apply=apply, params=old_model.params, model_state=old_model.model_state,
               taps=old_model.taps, name=old_model.name or "old_model")


def lwf_objective(old_classes: int, *, temperature: float = 2.0, lwf_weight: float = 1.0,
                  label_key: str = "label") -> Term:
  r"""The Learning-without-Forgetting objective for a student with old + new outputs.

  .. math::
    L = \mathrm{CE}(y - C_{old},\ z_s[C_{old}:])
        + \lambda\, T^2\, \mathrm{KL}(\mathrm{softmax}(z_{old}[:C_{old}] / T) \,\|\,
                                   \mathrm{softmax}(z_s[:C_{old}] / T))

  The new-task labels ``batch[label_key]`` are global class ids in
  ``[old_classes, old_classes + new_classes)``; the cross-entropy sees only the new logits (the
  multi-head setting of the paper), the distillation only the old ones. ``lwf_weight=0`` is plain
  fine-tuning of the new head and the shared layers.

  Args:
    old_classes: how many leading logits belong to the old task(s).
    temperature: the distillation temperature (the paper uses 2).
    lwf_weight: the weight :math:`\lambda` of the distillation term. The term is scaled by
      :math:`T^2` (kdjax's KD convention); the paper's :math:`\lambda_o = 1` with its unscaled
      soft cross-entropy is ``lwf_weight = 1 / T**2``.
    label_key: the batch entry holding the new task's labels.

  Returns:
    A term with metrics ``new_ce`` and ``lwf`` (each unweighted) and ``loss``.

  References:
    Z. Li, D. Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017.
  """
  if old_classes < 1:
    raise ValueError(f"old_classes must be >= 1, got {old_classes}")
  if not lwf_weight >= 0:
    raise ValueError(f"lwf_weight must be >= 0, got {lwf_weight}")

  def old_logits(out):
    return out.logits[..., :old_classes]

  def new_logits(out):
    if out.logits.shape[-1] <= old_classes:
      raise ValueError(f"the student has {out.logits.shape[-1]} outputs, but LwF needs more than "
                       f"old_classes={old_classes}; widen its head with expand_head")
    return out.logits[..., old_classes:]

  def new_task_ce(logits, labels):
    return losses.cross_entropy(logits, labels - old_classes)

  return combine({
      "new_ce": from_loss(new_task_ce, student=new_logits, teacher=None, labels=True,
                          label_key=label_key),
      "lwf": (from_loss(losses.kd, student=old_logits, teacher=old_logits,
                        temperature=temperature), float(lwf_weight)),
  })

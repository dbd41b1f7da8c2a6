"""Deep mutual learning: a cohort of students that teach each other while they train.

Each student ``k`` minimises

    L_k = CE(y, z_k) + kd_weight * mean_{j != k} T^2 KL(p_j^T || p_k^T)

where ``p_j`` are the other students' current predictions on the same batch, held fixed
(``stop_gradient``). Since no ``L_k`` depends on another student's parameters, differentiating the
sum ``sum_k L_k`` once gives every student its own gradient: all students update simultaneously,
in one compiled step, from the predictions they all made before the update.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from kdjax import _checkpointable
from kdjax import losses
from kdjax.models import Model
from kdjax.objectives import masked_mean
from kdjax.step import batch_metrics, init_optimizer, masked_out_inputs, pmean

PyTree = Any
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class MutualState:
  """The state of a mutual-learning cohort, as one pytree.

  Attributes:
    step: number of updates applied so far (int32 scalar).
    params: one params pytree per student (a tuple).
    model_states: one non-trainable collection per student (BatchNorm statistics).
    opt_states: one optax state per student, so that a transformation with global statistics
      (``clip_by_global_norm``) treats each student on its own, as if trained alone.
    rng: base key; step ``i`` draws from ``fold_in(rng, i)``, student ``k`` from a fold of that.
    applies: static: the students' model-protocol ``apply`` functions.
    tx: static: the optax transformation applied to each student.
    temperature, kd_weight: static: the softmax temperature of the mutual KL and its weight.
    input_key, label_key: which batch entries hold the model inputs and the integer labels.
  """

  step: jax.Array
  params: tuple
  model_states: tuple
  opt_states: tuple
  rng: jax.Array
  applies: tuple = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  kd_weight: float = flax.struct.field(pytree_node=False, default=1.0)
  input_key: str = flax.struct.field(pytree_node=False, default="image")
  label_key: str = flax.struct.field(pytree_node=False, default="label")

  @classmethod
  def create(cls, students: Sequence[Model], tx: optax.GradientTransformation, rng: jax.Array,
             example_batch: Batch, temperature: float = 1.0, kd_weight: float = 1.0, *,
             input_key: str = "image", label_key: str = "label") -> "MutualState":
    """Builds the cohort's initial state.

    Args:
      students: two or more models with the same number of classes.
      tx: the optax transformation; each student gets its own optimizer state.
      rng: a PRNG key for the step's draws (dropout).
      example_batch: a batch (arrays or ``jax.ShapeDtypeStruct``) with a training batch's
        shapes; only shapes are used.
      temperature: softmax temperature ``T`` of the mutual KL (the paper uses 1).
      kd_weight: weight of the mutual KL; 0 trains the students independently.
      input_key: batch entry holding the model inputs.
      label_key: batch entry holding integer labels.
    """
    students = tuple(students)
    if len(students) < 2:
      raise ValueError(f"mutual learning needs at least 2 students, got {len(students)}")
    for s in students:
      if not isinstance(s, Model):
        raise TypeError(f"students must be kdjax.models.Model objects, got {type(s).__name__}; "
                        "wrap Flax modules with kdjax.models.from_linen / from_nnx")
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    if not kd_weight >= 0:
      raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
    if input_key not in example_batch:
      raise ValueError(f"the batch has no {input_key!r} entry (it has {sorted(example_batch)}); "
                       "pass input_key=... naming the entry that holds the model inputs")
    x = example_batch[input_key]
    classes = []
    for s in students:
      out, _ = jax.eval_shape(lambda p, ms, x, s=s: s.apply(p, ms, x, train=False, rng=None),
                              s.params, s.model_state, x)
      classes.append(out.logits.shape[-1])
    if len(set(classes)) != 1:
      raise ValueError(f"the students predict {classes} classes; mutual learning compares their "
                       "distributions, so build every student with the same num_classes")
    # The state owns copies, so a donating jitted step never deletes the Models' arrays.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    params = tuple(copy(s.params) for s in students)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               model_states=tuple(copy(s.model_state) for s in students),
               opt_states=tuple(init_optimizer(tx, p) for p in params), rng=rng,
               applies=tuple(s.apply for s in students), tx=tx,
               temperature=float(temperature), kd_weight=float(kd_weight), input_key=input_key,
               label_key=label_key)

  def checkpoint_tree(self) -> dict[str, PyTree]:
    """What a checkpoint of the cohort holds: every trained field."""
    return _checkpointable.checkpoint_tree(self)

  def from_checkpoint_tree(self, tree: PyTree) -> "MutualState":
    """This state with the trained fields of ``tree`` (from :meth:`checkpoint_tree`)."""
    return _checkpointable.from_checkpoint_tree(self, tree)

  def student(self, k: int) -> Model:
    """Student ``k`` as a :class:`~kdjax.models.Model` (to evaluate it, or to use as a teacher)."""
    return Model(apply=self.applies[k], params=self.params[k], model_state=self.model_states[k],
                 name=f"student_{k}")


def mutual_losses(logits: Sequence[jax.Array], labels: jax.Array, batch: Batch, *,
                  temperature: float, kd_weight: float,
                  mask_key: str = "mask") -> tuple[jax.Array, dict[str, jax.Array]]:
  """The cohort's total loss ``sum_k L_k`` and each student's CE and mutual KL.

  Args:
    logits: one ``[B, C]`` array per student (the students' current predictions).
    labels: integer labels ``[B]``.
    batch: the batch (for its optional ``mask``).
    temperature: the KL's softmax temperature.
    kd_weight: the KL's weight.
    mask_key: batch entry with the per-example validity mask.

  Returns:
    ``(total, metrics)`` with ``student_{k}/ce``, ``student_{k}/kl`` and ``student_{k}/loss``.
  """
  n = len(logits)
  targets = [jax.lax.stop_gradient(z) for z in logits]
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for k, z in enumerate(logits):
    ce = masked_mean(losses.cross_entropy(z, labels), batch, mask_key)
    kl = sum(masked_mean(losses.kd(z, targets[j], temperature=temperature), batch, mask_key)
             for j in range(n) if j != k) / (n - 1)
    loss_k = ce + kd_weight * kl
    total = total + loss_k
    metrics.update({f"student_{k}/ce": ce, f"student_{k}/kl": kl, f"student_{k}/loss": loss_k})
  return total, metrics


def mutual_step(state: MutualState, batch: Batch, *,
                axis_name: str | None = None) -> tuple[MutualState, dict[str, jax.Array]]:
  """One deep-mutual-learning update of every student.

  Args:
    state: the :class:`MutualState`.
    batch: a dict of arrays with a leading batch axis: ``state.input_key``,
      ``state.label_key`` and optionally ``mask``.
    axis_name: set under ``pmap`` / ``shard_map``: gradients, BatchNorm statistics and metrics
      are averaged over that axis.

  Returns:
    ``(new_state, metrics)``; metrics hold ``loss`` (the sum over students) and, per student,
    ``student_{k}/loss``, ``/ce``, ``/kl`` and ``/accuracy``.

  References:
    Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual Learning", CVPR 2018.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  inputs = masked_out_inputs(batch[state.input_key], batch.get("mask"))

  def loss_fn(params):
    logits, new_model_states = [], []
    for k, (apply, p, ms) in enumerate(zip(state.applies, params, state.model_states)):
      out, new_ms = apply(p, ms, inputs, train=True, rng=jax.random.fold_in(rng, k))
      logits.append(out.logits)
      new_model_states.append(new_ms)
    total, metrics = mutual_losses(logits, batch[state.label_key], batch,
                                   temperature=state.temperature, kd_weight=state.kd_weight)
    return total, (logits, tuple(new_model_states), metrics)

  (total, (logits, model_states, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  for k, z in enumerate(logits):
    metrics.update({f"student_{k}/{name}": v
                    for name, v in batch_metrics(z, None, batch, state.label_key).items()})
  metrics["loss"] = total
  grads = pmean(grads, axis_name)
  model_states = pmean(model_states, axis_name)
  metrics = pmean(metrics, axis_name)
  new_params, new_opt_states = [], []
  # Like distill_step: optax runs under standard dtype promotion (some transformations mix
  # Python floats with int32 counts), kdjax's own code under whatever the caller set.
  with jax.numpy_dtype_promotion("standard"):
    for p, g, o in zip(state.params, grads, state.opt_states):
      updates, o = state.tx.update(g, o, p)
      new_params.append(optax.apply_updates(p, updates))
      new_opt_states.append(o)
  new_state = state.replace(step=state.step + 1, params=tuple(new_params),
                            model_states=model_states, opt_states=tuple(new_opt_states))
  return new_state, metrics

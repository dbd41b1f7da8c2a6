"""The distillation step: one pure function from (state, batch) to (state, metrics).

``jax.jit(kdjax.distill_step)`` works as is; ``kdjax.parallel`` wraps the very same function for
meshes (``jit`` + named shardings) and ``pmap``. The teacher runs in inference mode under
``stop_gradient`` inside the same compiled program but outside the differentiated function, so
none of its activations are kept for the backward pass and its parameters never reach the
optimizer.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from kdjax import _checkpointable
from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.models import Model, Outputs
from kdjax.objectives import Needs, Term

__all__ = (
    "DistillState",
    "batch_metrics",
    "distill_step",
    "eval_step",
    "init_optimizer",
    "masked_out_inputs",
    "pmean",
    "predictions",
    "teacher_forward",
)

PyTree = Any
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class DistillState:
  """Everything a distillation step reads and writes, as one pytree.

  Attributes:
    step: number of updates applied so far (int32 scalar).
    params: the trainable parameters, ``{'student': ..., 'objective': ...}``; the objective's
      entry holds the terms' adapters (FitNets regressors, projectors), trained with the student.
    student_state: the student's non-trainable collections (BatchNorm statistics).
    objective_state: the terms' non-trainable state (memory banks, buffers).
    opt_state: the optax state of ``params``.
    rng: base key; step ``i`` draws from ``fold_in(rng, i)`` so a resumed run draws the same.
    teacher_params, teacher_state: the frozen teacher's variables (``None`` without a teacher);
      never part of a checkpoint (:meth:`checkpoint_tree`).
    student_apply, teacher_apply, tx, objective: static: the model protocol functions, the
      optax transformation and the objective term.
    input_key, label_key: which batch entries hold the student's inputs and the integer labels.
    teacher_input_key: the batch entry the teacher reads (``None``: ``input_key``, the same
      inputs as the student); see :attr:`teacher_key`.
    input_shape: static: the per-example shape of ``example_batch[input_key]`` (one tuple per
      input array), so a step fed inputs of another shape says so before the model fails.
    accumulation_steps: micro-batches per update (gradient accumulation).
  """

  step: jax.Array
  params: PyTree
  student_state: PyTree
  objective_state: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  teacher_params: PyTree = _checkpointable.frozen_field()
  teacher_state: PyTree = _checkpointable.frozen_field()
  student_apply: Callable = flax.struct.field(pytree_node=False)
  teacher_apply: Callable | None = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  objective: Term = flax.struct.field(pytree_node=False)
  input_key: str = flax.struct.field(pytree_node=False, default="image")
  label_key: str = flax.struct.field(pytree_node=False, default="label")
  teacher_input_key: str | None = flax.struct.field(pytree_node=False, default=None)
  accumulation_steps: int = flax.struct.field(pytree_node=False, default=1)
  input_shape: tuple[tuple[int, ...], ...] | None = flax.struct.field(pytree_node=False,
                                                                      default=None)

  @classmethod
  def create(cls,
             *,
             student: Model,
             teacher: Model | None,
             objective: Term,
             tx: optax.GradientTransformation,
             rng: jax.Array,
             example_batch: Batch,
             input_key: str = "image",
             label_key: str = "label",
             teacher_input_key: str | None = None,
             accumulation_steps: int = 1) -> "DistillState":
    """Builds the initial state: objective adapters are initialised from the models' shapes.

    Args:
      student: the model being trained (:func:`kdjax.models.from_linen` and friends).
      teacher: the frozen teacher, or ``None`` (plain supervised training, self-distillation).
      objective: a term, usually :func:`kdjax.objectives.combine` of several.
      tx: the optax transformation applied to ``params``.
      rng: a PRNG key; split for the objective's init and the step's draws.

    The state holds copies of the models' arrays, so donating the state to a jitted step never
    deletes arrays the :class:`~kdjax.models.Model` objects still hold.
      example_batch: a batch (arrays or ``jax.ShapeDtypeStruct``) with the shapes of a training
        batch; only shapes are used.
      input_key: batch entry holding the student's inputs.
      teacher_input_key: batch entry holding the teacher's inputs (``None``: ``input_key``): a
        teacher that sees another view of each example (the full image while the student sees
        a degraded one, another modality). The two entries must describe the same examples.
      label_key: batch entry holding integer labels (used for accuracy and label-aware terms).
      accumulation_steps: split each batch into this many micro-batches and average their
        gradients before one update.
    """
    if not isinstance(student, Model) or (teacher is not None and not isinstance(teacher, Model)):
      raise TypeError("student and teacher must be kdjax.models.Model objects; wrap Flax modules "
                      "with kdjax.models.from_linen / from_nnx / from_apply_fn")
    if input_key not in example_batch:
      raise ValueError(f"the batch has no {input_key!r} entry (it has {sorted(example_batch)}); "
                       "pass input_key=... naming the entry that holds the model inputs "
                       "(config.<model section>.input_key)")
    _check_not_empty(example_batch[input_key], input_key, "example_batch")
    teacher_key = input_key if teacher_input_key is None else teacher_input_key
    if teacher is not None and teacher_key not in example_batch:
      raise ValueError(f"the batch has no {teacher_key!r} entry for the teacher (it has "
                       f"{sorted(example_batch)}); pass teacher_input_key=... naming the entry "
                       "that holds the teacher's inputs (config.teacher.input_key)")
    _check_needed_keys(objective, example_batch, "example_batch")
    accumulation_steps = int(accumulation_steps)
    batch_size = jax.tree.leaves(example_batch)[0].shape[0]
    if accumulation_steps < 1 or batch_size % accumulation_steps:
      raise ValueError(f"accumulation_steps={accumulation_steps} must be >= 1 and divide the "
                       f"batch size {batch_size}")
    x = example_batch[input_key]
    s_out, _ = jax.eval_shape(
        lambda p, s, x: student.apply(p, s, x, train=False, rng=None), student.params,
        student.model_state, x)
    t_out = None
    if teacher is not None:
      t_out, _ = jax.eval_shape(
          lambda p, s, x: teacher.apply(p, s, x, train=False, rng=None), teacher.params,
          teacher.model_state, example_batch[teacher_key])
      # A teacher that predicts other positions (another tokenization of the same text) has
      # its own vocabulary: its terms align the two (kdjax.lm.cross_tokenizer_term).
      if (s_out.logits.shape[:-1] == t_out.logits.shape[:-1] and
          s_out.logits.shape[-1] != t_out.logits.shape[-1]):
        raise ValueError(
            f"teacher logits have {t_out.logits.shape[-1]} classes but the student has "
            f"{s_out.logits.shape[-1]}; build both models with the same num_classes "
            "(config.student.num_classes / config.teacher.num_classes)")
    zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)
    # Shapes only: the example batch may hold jax.ShapeDtypeStructs.
    loss_utils.check_mask(zeros(example_batch.get("mask")), s_out.logits.shape[:-1],
                          "example_batch: the student's predictions (logits.shape[:-1])")
    obj_rng, step_rng = jax.random.split(rng)
    obj_params, obj_state = objective.init(obj_rng, zeros(s_out), zeros(t_out),
                                           zeros(dict(example_batch)))
    # The state owns copies of the models' arrays: a step jitted with donate_argnums=0 then never
    # deletes the arrays a Model (reused for a baseline run, or for evaluation) still holds.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    params = {"student": copy(student.params), "objective": obj_params}
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        student_state=copy(student.model_state),
        objective_state=obj_state,
        opt_state=init_optimizer(tx, params),
        rng=step_rng,
        teacher_params=None if teacher is None else copy(teacher.params),
        teacher_state=None if teacher is None else copy(teacher.model_state),
        student_apply=student.apply,
        teacher_apply=None if teacher is None else teacher.apply,
        tx=tx,
        objective=objective,
        input_key=input_key,
        label_key=label_key,
        teacher_input_key=teacher_input_key,
        accumulation_steps=accumulation_steps,
        input_shape=_example_shape(x))


  @property
  def teacher_key(self) -> str:
    """The batch entry the teacher reads: ``teacher_input_key``, or the student's ``input_key``."""
    return self.input_key if self.teacher_input_key is None else self.teacher_input_key

  def checkpoint_tree(self) -> dict[str, PyTree]:
    """What a checkpoint of this state holds: every trained field, never the teacher."""
    return _checkpointable.checkpoint_tree(self)

  def from_checkpoint_tree(self, tree: PyTree) -> "DistillState":
    """This state with the trained fields of ``tree`` (from :meth:`checkpoint_tree`)."""
    return _checkpointable.from_checkpoint_tree(self, tree)

  def with_teacher(self, teacher: Model | None) -> "DistillState":
    """The same student state distilling from (or, at evaluation, compared with) ``teacher``."""
    if teacher is None:
      return self.replace(teacher_params=None, teacher_state=None, teacher_apply=None)
    return self.replace(teacher_params=teacher.params, teacher_state=teacher.model_state,
                        teacher_apply=teacher.apply)

  def with_student(self, student: Model) -> "DistillState":
    """The same state with ``student``'s parameters, model state and ``apply`` (e.g. its
    quantized form); the optimizer state and the objective's are kept."""
    return self.replace(params={**self.params, "student": student.params},
                        student_state=student.model_state, student_apply=student.apply)

  def student(self, *, taps: tuple[str, ...] = (), name: str = "student") -> Model:
    """The trained student as a :class:`~kdjax.models.Model` holding copies of its arrays.

    Copies, so that stepping this state further with a donating jitted step never deletes the
    returned model's arrays (e.g. when it becomes the next run's teacher).
    """
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    return Model(apply=self.student_apply, params=copy(self.params["student"]),
                 model_state=copy(self.student_state), taps=tuple(taps), name=name)


def _example_shape(inputs: Any) -> tuple[tuple[int, ...], ...]:
  """The per-example shape of each input array (its shape without the batch axis)."""
  return tuple(tuple(a.shape[1:]) for a in jax.tree.leaves(inputs))


def _check_not_empty(inputs: Any, input_key: str, what: str) -> None:
  for a in jax.tree.leaves(inputs):
    if a.ndim == 0 or a.shape[0] == 0:
      raise ValueError(f"{what} is empty: its {input_key!r} entry has shape {a.shape}; a batch "
                       "needs a leading batch axis with at least one example (drop empty "
                       "batches, or pad them and mark the padding in batch['mask'])")


def _check_needed_keys(objective: Term, batch: Batch, what: str) -> None:
  """The batch keys the objective declares (``objective.needs.batch``) must all be present."""
  needs = getattr(objective, "needs", Needs())
  missing = [k for k in needs.batch if k not in batch]
  if missing:
    raise ValueError(f"the objective reads batch key(s) {missing} but {what} has "
                     f"{sorted(batch)}; add {missing[0]!r} to the batch, or point the term at the "
                     "key that holds it (e.g. label_key=... for the labels)")


def _check_batch(state: "DistillState", batch: Batch, *, objective: bool) -> None:
  """Trace-time checks of a step's batch against what ``DistillState.create`` saw.

  Inputs whose per-example shape differs from the example batch's are refused, with the two
  shapes, when the student cannot run on them (a model that takes several sequence lengths
  still can).
  """
  if state.input_key not in batch:
    raise ValueError(f"the batch has no {state.input_key!r} entry (it has {sorted(batch)}); "
                     "feed batches with the entries of the example batch given to "
                     "DistillState.create")
  inputs = batch[state.input_key]
  _check_not_empty(inputs, state.input_key, "the batch")
  if state.teacher_apply is not None and state.teacher_key not in batch:
    raise ValueError(f"the batch has no {state.teacher_key!r} entry for the teacher (it has "
                     f"{sorted(batch)}); feed batches with the entries of the example batch "
                     "given to DistillState.create")
  if objective:
    _check_needed_keys(state.objective, batch, "the batch")
  if state.input_shape is None or _example_shape(inputs) == state.input_shape:
    return
  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  try:
    jax.eval_shape(lambda p, s, x: state.student_apply(p, s, x, train=False, rng=None),
                   abstract(state.params["student"]), abstract(state.student_state),
                   abstract(inputs))
  except Exception as e:  # The model's own error (e.g. Flax's ScopeParamShapeError) is chained.
    shapes = lambda shape_list: ", ".join(str(("batch", *s)) for s in shape_list)
    got = ", ".join(str(tuple(a.shape)) for a in jax.tree.leaves(inputs))
    raise ValueError(
        f"the student expects inputs shaped {shapes(state.input_shape)} (from example_batch), "
        f"got {got} in batch[{state.input_key!r}]; feed batches shaped like the example batch, "
        "or create the state with an example batch of the new shape") from e


def init_optimizer(tx: optax.GradientTransformation, params: PyTree) -> optax.OptState:
  """``tx.init(params)`` under standard dtype promotion (optax mixes Python floats and ints)."""
  with jax.numpy_dtype_promotion("standard"):
    return tx.init(params)


def teacher_forward(state: DistillState, inputs: Any) -> Outputs | None:
  """The frozen teacher's outputs: inference mode, no gradient."""
  if state.teacher_apply is None:
    return None
  out, _ = state.teacher_apply(state.teacher_params, state.teacher_state, inputs, train=False,
                               rng=None)
  return jax.lax.stop_gradient(out)


def pmean(tree: PyTree, axis_name: str | None) -> PyTree:
  """``lax.pmean`` over ``axis_name``; the tree itself when there is no mapped axis (``jit``)."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


# Tokens per block when a prediction is computed from a decoder's hidden states and head.
_PREDICTION_CHUNK = 512


def predictions(out: Outputs | jax.Array) -> jax.Array:
  """The argmax class of each example (or token) of a model's outputs.

  For outputs that carry a decoder's ``pre_logits`` ``[..., D]`` and ``head`` ``[D, V]`` taps
  (those of a chunked objective, ``kdjax.lm.chunked_kd_term``), the argmax of ``pre_logits @
  head`` is computed 512 tokens at a time, so that a metric does not materialise the
  ``[B, L, V]`` logits the objective avoids (XLA then drops the model's own logits when nothing
  else reads them); a final soft-cap keeps the argmax. Otherwise the argmax of ``out.logits``
  (or of ``out``, an array of logits).
  """
  if not isinstance(out, Outputs):
    return jnp.argmax(out, axis=-1)
  hidden, head = out.features.get("pre_logits"), out.features.get("head")
  if (hidden is None or head is None or head.ndim != 2 or
      hidden.shape != (*out.logits.shape[:-1], head.shape[0]) or
      head.shape[1] != out.logits.shape[-1]):
    return jnp.argmax(out.logits, axis=-1)
  flat = hidden.reshape(-1, head.shape[0])
  n = flat.shape[0]
  size = min(_PREDICTION_CHUNK, n)
  blocks = -(-n // size)
  flat = jnp.pad(flat, ((0, blocks * size - n), (0, 0)))
  pred = jax.lax.map(
      lambda h: jnp.argmax(jnp.einsum("td,dv->tv", h, head.astype(h.dtype),
                                      preferred_element_type=jnp.float32), axis=-1),
      flat.reshape(blocks, size, -1))
  return pred.reshape(-1)[:n].reshape(out.logits.shape[:-1])


def batch_metrics(student: Outputs | jax.Array, teacher_out: Outputs | None, batch: Batch,
                  label_key: str) -> dict[str, jax.Array]:
  """Top-1 ``accuracy`` (with labels) and student-teacher ``agreement`` (with a teacher that
  predicts the same positions) of a batch.

  ``student``: the student's :class:`~kdjax.models.Outputs` or its logits; each model's
  prediction is :func:`predictions`. Both metrics are :func:`kdjax.losses.masked_mean` over the
  examples (or tokens) ``batch['mask']`` keeps. The mask must have the batch's leading shape,
  ``logits.shape[:-1]`` (``[B]``, or ``[B, L]`` for token logits) or ``[B]``; any other shape is
  a ``ValueError``, never ignored.
  """
  metrics = {}
  pred = predictions(student)
  mask = loss_utils.check_mask(batch.get("mask"), pred.shape,
                               "the student's predictions (logits.shape[:-1])")
  labels = batch.get(label_key)
  if labels is not None and labels.shape == pred.shape:
    metrics["accuracy"] = losses.masked_mean(pred == labels, mask)
  if teacher_out is not None and teacher_out.logits.shape[:-1] == pred.shape:
    metrics["agreement"] = losses.masked_mean(pred == predictions(teacher_out), mask)
  return metrics


def masked_out_inputs(inputs: Any, mask: Any) -> Any:
  """Float inputs with the examples ``mask`` drops set to 0: their values reach no gradient.

  A NaN pixel of a masked example would otherwise reach the gradient through the first layer
  (``x.T @ dy`` is ``nan * 0``). Leaves whose leading shape is not the mask's pass unchanged.
  """
  if mask is None:
    return inputs
  mask = jnp.asarray(mask).astype(jnp.bool_)
  return jax.tree.map(
      lambda x: loss_utils.mask_inputs(mask, x)[0] if (
          jnp.issubdtype(x.dtype, jnp.floating) and x.shape[:mask.ndim] == mask.shape) else x,
      inputs)


def _teacher_inputs(state: DistillState, batch: Batch, student_inputs: Any, mask: Any) -> Any:
  """The teacher's inputs: ``batch[state.teacher_key]`` (masked like the student's), or the
  student's own when both read the same entry."""
  if state.teacher_apply is None or state.teacher_key == state.input_key:
    return student_inputs
  return masked_out_inputs(batch[state.teacher_key], mask)


def _grads_and_metrics(state: DistillState, batch: Batch, rng: jax.Array, student_state,
                       objective_state, axis_name):
  inputs = masked_out_inputs(batch[state.input_key], batch.get("mask"))
  teacher_out = teacher_forward(state, _teacher_inputs(state, batch, inputs, batch.get("mask")))

  def loss_fn(params):
    student_out, new_student_state = state.student_apply(
        params["student"], student_state, inputs, train=True, rng=rng)
    loss, new_objective_state, metrics = state.objective.apply(
        params["objective"], objective_state, student_out, teacher_out, batch, state.step,
        axis_name=axis_name)
    return loss, (student_out, new_student_state, new_objective_state, metrics)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  student_out, new_student_state, new_objective_state, metrics = aux
  metrics = {**metrics, "loss": loss,
             **batch_metrics(student_out, teacher_out, batch, state.label_key)}
  return grads, new_student_state, new_objective_state, metrics


def distill_step(state: DistillState, batch: Batch, *,
                 axis_name: str | None = None) -> tuple[DistillState, dict[str, jax.Array]]:
  """One distillation update.

  Args:
    state: the :class:`DistillState`.
    batch: a dict of arrays with a leading batch axis: ``state.input_key`` (the student's
      inputs), ``state.teacher_key`` (the teacher's, when it reads another entry),
      ``state.label_key`` (integer labels, when terms or metrics need them), optionally ``mask``
      (per-example validity) and whatever else the terms read (e.g. ``index``).
    axis_name: set when the step runs under ``pmap`` (or ``shard_map``): gradients, BatchNorm
      statistics and metrics are averaged over that axis, and batch-level terms gather their
      inputs over it.

  Returns:
    ``(new_state, metrics)``; metrics hold ``loss`` (the weighted total), each term's loss by
    name, ``accuracy`` (when labels are given) and ``agreement`` (student-teacher top-1, when
    there is a teacher).
  """
  _check_batch(state, batch, objective=True)
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  k = state.accumulation_steps
  if k == 1:
    grads, student_state, objective_state, metrics = _grads_and_metrics(
        state, batch, rng, state.student_state, state.objective_state, axis_name)
  else:
    # Micro-batch j takes examples j, j+k, j+2k, ...: splitting the batch axis as [B/k, k] keeps
    # its leading axis (the one sharded over devices) intact.
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1),
                         dict(batch))

    def body(carry, xs):
      grad_sum, student_state, objective_state = carry
      micro_batch, j = xs
      grads, student_state, objective_state, metrics = _grads_and_metrics(
          state, micro_batch, jax.random.fold_in(rng, j), student_state, objective_state,
          axis_name)
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return (grad_sum, student_state, objective_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, student_state, objective_state), metrics = jax.lax.scan(
        body, (zeros, state.student_state, state.objective_state), (micro, jnp.arange(k)))
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

  grads = pmean(grads, axis_name)
  student_state = pmean(student_state, axis_name)
  metrics = pmean(metrics, axis_name)
  # optax mixes Python floats with int32 step counts (e.g. Adam's bias correction), which
  # strict dtype promotion rejects; the optimizer runs under standard promotion so kdjax code
  # itself can be checked under strict promotion.
  with jax.numpy_dtype_promotion("standard"):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, student_state=student_state,
                            objective_state=objective_state, opt_state=opt_state)
  return new_state, metrics


def eval_step(state: DistillState, batch: Batch, *,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Student (and teacher) predictions on a batch, in inference mode.

  Returns per-example arrays, for the caller to aggregate (accuracy, top-5, macro F1,
  calibration, perplexity): ``prediction`` (student argmax), ``confidence`` (student max
  probability), ``nll`` (the label's negative log-likelihood),
  ``top5`` (whether the label is in the student's top 5; only with >= 5 classes),
  ``correct`` and, with a teacher of the same positions, ``teacher_prediction`` and
  ``agreement``. ``batch['mask']`` (when present) is passed through as ``mask``.
  """
  del axis_name  # Per-example outputs need no collective.
  _check_batch(state, batch, objective=False)
  inputs = batch[state.input_key]
  out, _ = state.student_apply(state.params["student"], state.student_state, inputs, train=False,
                               rng=None)
  logits = out.logits.astype(jnp.float32)
  loss_utils.check_mask(batch.get("mask"), logits.shape[:-1],
                        "the student's predictions (logits.shape[:-1])")
  probs = jax.nn.softmax(logits, axis=-1)
  result = {"prediction": jnp.argmax(logits, axis=-1), "confidence": jnp.max(probs, axis=-1)}
  labels = batch.get(state.label_key)
  if labels is not None:
    result["correct"] = result["prediction"] == labels
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    result["nll"] = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32),
                                         axis=-1)[..., 0]
    if logits.shape[-1] >= 5:
      _, top5 = jax.lax.top_k(logits, 5)
      result["top5"] = jnp.any(top5 == labels[..., None], axis=-1)
  teacher_out = teacher_forward(state, _teacher_inputs(state, batch, inputs, None))
  if teacher_out is not None and teacher_out.logits.shape[:-1] == logits.shape[:-1]:
    result["teacher_prediction"] = jnp.argmax(teacher_out.logits, axis=-1)
    result["agreement"] = result["prediction"] == result["teacher_prediction"]
  if "mask" in batch:
    result["mask"] = batch["mask"]
  return result

"""Several teachers, one per example: a batch's ``teacher_id`` picks whose outputs each example
is distilled from: :func:`routed_teacher` runs each teacher on its own examples (a gather of
fixed capacity), :func:`route_teachers` selects among outputs computed on the whole batch."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import Model, Outputs

TEACHER_ID_KEY = "teacher_id"


def route_teachers(teacher_id: jax.typing.ArrayLike,
                   outputs: Sequence[Any]) -> tuple[Any, jax.Array]:
  r"""Per example, the outputs of the teacher its ``teacher_id`` names, and each teacher's mask.

  .. math::
    \mathrm{selected}[b] = \mathrm{outputs}[\mathrm{id}_b][b],\qquad
    \mathrm{masks}[t, b] = [\mathrm{id}_b = t]

  Every teacher runs on the whole batch (fixed shapes, one program); this keeps each example's
  own teacher. An id outside ``[0, len(outputs))`` selects zeros and no teacher's mask holds it,
  so such an example is scored by none (AND ``masks[t]`` or ``masks.any(0)`` into the loss mask).

  Args:
    teacher_id: int ``[B]``, the batch's ``'teacher_id'`` field.
    outputs: one pytree per teacher (logits ``[B, L, V]``, or ``kdjax.models.Outputs``), all
      with the same structure, shapes and dtypes, leaves batch-major ``[B, ...]``.

  Returns:
    ``(selected, masks)``: a pytree like one teacher's outputs, and bool ``[T, B]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import lm
    >>> sel, masks = lm.route_teachers(jnp.array([1, 0]), [jnp.zeros((2, 3)), jnp.ones((2, 3))])
    >>> sel[:, 0], masks[1]
    (Array([1., 0.], dtype=float32), Array([ True, False], dtype=bool))
  """
  outputs = list(outputs)
  if not outputs:
    raise ValueError("route_teachers needs at least one teacher's outputs")
  ids = jnp.asarray(teacher_id)
  if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"the batch's '{TEACHER_ID_KEY}' must be integers of shape [batch], got "
                     f"{ids.dtype}{list(ids.shape)}")
  structure = jax.tree.structure(outputs[0])
  shapes = [jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), o) for o in outputs]
  for t, (o, s) in enumerate(zip(outputs, shapes)):
    if jax.tree.structure(o) != structure or s != shapes[0]:
      raise ValueError(f"teacher {t}'s outputs differ from teacher 0's in structure, shape or "
                       "dtype; several teachers of one run need the same output shapes (the same "
                       "vocabulary and taps)")
  for leaf in jax.tree.leaves(outputs[0]):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != ids.shape[0]:
      raise ValueError(f"teacher outputs of shape {jnp.shape(leaf)} do not have the batch's "
                       f"{ids.shape[0]} examples first")
  masks = ids[None, :] == jnp.arange(len(outputs), dtype=ids.dtype)[:, None]

  def select(*leaves):
    stacked = jnp.stack(leaves)  # [T, B, ...]
    m = masks.reshape(masks.shape + (1,) * (stacked.ndim - 2))
    return jnp.sum(jnp.where(m, stacked, jnp.zeros((), stacked.dtype)), axis=0)

  return jax.tree.map(select, *outputs), masks


ROUTED_INPUTS_KEY = "routed_inputs"  # The batch entry a routed teacher reads.


def check_teacher_ids(teacher_id: Any, num_teachers: int, *, capacity: int | None = None,
                      where: str = "the batch's 'teacher_id'") -> None:
  """Raises a one-line ``ValueError`` unless every id is an integer in ``[0, num_teachers)``
  and (given ``capacity``) no teacher has more than ``capacity`` examples.

  The host-side check of what :func:`routed_teacher` cannot check inside ``jit``: call it on
  each batch (numpy) before the step.
  """
  ids = np.asarray(teacher_id)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{where} must be integers of shape [batch], got {ids.dtype}"
                     f"{list(ids.shape)}")
  bad = ids[(ids < 0) | (ids >= num_teachers)]
  if bad.size:
    raise ValueError(f"{where} holds {bad.size} id(s) outside [0, {num_teachers}) (e.g. "
                     f"{int(bad[0])}), but there are {num_teachers} teachers; give each example "
                     f"the index of one of the teachers, 0 to {num_teachers - 1}")
  if capacity is not None:
    counts = np.bincount(ids, minlength=num_teachers)
    if counts.max() > capacity:
      t = int(counts.argmax())
      raise ValueError(f"{where} routes {int(counts[t])} examples of one batch to teacher {t}, "
                       f"more than the routing capacity {capacity}; raise the capacity (at most "
                       "the batch size, which always fits)")


def routed_teacher(teachers: Sequence[Model], *, capacity: int | None = None,
                   name: str = "routed") -> Model:
  r"""Several teachers as one :class:`~kdjax.models.Model`: each example gets the outputs of the
  teacher its ``teacher_id`` names, and each teacher runs on its own examples only.

  The model reads ``{'inputs': x, 'teacher_id': int [B]}`` (``x`` any batch-major pytree, e.g.
  tokens ``[B, L]`` or packed rows). For each teacher ``t``, with static shapes under ``jit``:
  its examples are gathered into ``capacity`` rows (its ``n_t`` examples first, in batch order;
  the rest of the rows are other examples, whose outputs are discarded), the teacher runs on
  those rows, and its outputs are scattered back to its examples:

  .. math::
    \mathrm{logits}[b] = f_{\mathrm{id}_b}(x_b)

  With ``capacity = B`` (the default) every teacher runs ``B`` rows, as many as computing every
  teacher on the whole batch and selecting (:func:`route_teachers`) but without ever reading
  another teacher's outputs; a smaller ``capacity`` (e.g. ``ceil(B / T)`` for balanced routing)
  runs each teacher on ``capacity`` rows only. An example past its teacher's capacity, or with an
  id outside ``[0, T)``, gets zero logits and ``features['routed'] = False``: check the ids
  on the host with :func:`check_teacher_ids` (the ``distill`` run kind does, per batch), since
  nothing can raise inside ``jit``.

  Args:
    teachers: the trained teachers (the same output shapes: one vocabulary).
    capacity: rows per teacher forward, ``1 <= capacity <= B``; ``None``: the batch size.
    name: the model's name.

  Returns:
    A model usable as ``DistillState.create(teacher=..., teacher_input_key=ROUTED_INPUTS_KEY)``;
    its outputs hold ``logits`` and ``features['routed']`` (bool ``[B]``).

  Examples:
    >>> teacher = lm.routed_teacher([code_teacher, prose_teacher])  # doctest: +SKIP
    >>> batch[lm.ROUTED_INPUTS_KEY] = {'inputs': batch['tokens'], 'teacher_id': ids}  # doctest: +SKIP

  References:
    Mixture-of-experts routing with a fixed expert capacity: N. Shazeer et al., "Outrageously
    Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", 2017; W. Fedus,
    B. Zoph, N. Shazeer, "Switch Transformers", 2021.
  """
  teachers = tuple(teachers)
  if not teachers:
    raise ValueError("routed_teacher needs at least one teacher")
  for t in teachers:
    if not isinstance(t, Model):
      raise TypeError(f"teachers must be kdjax.models.Model objects, got {type(t).__name__}")
  if capacity is not None and (int(capacity) != capacity or capacity < 1):
    raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")
  applies = tuple(t.apply for t in teachers)

  def apply(params, model_state, inputs, *, train: bool, rng: jax.Array | None):
    if not isinstance(inputs, Mapping) or set(inputs) != {"inputs", TEACHER_ID_KEY}:
      raise ValueError(f"a routed teacher reads {{'inputs': ..., '{TEACHER_ID_KEY}': [B]}}, got "
                       f"{type(inputs).__name__}; put it in the batch under "
                       f"'{ROUTED_INPUTS_KEY}' and pass teacher_input_key='{ROUTED_INPUTS_KEY}'")
    x, ids = inputs["inputs"], jnp.asarray(inputs[TEACHER_ID_KEY])
    b = ids.shape[0]
    cap = b if capacity is None else min(int(capacity), b)
    logits, routed, new_states = None, jnp.zeros((b,), bool), []
    for t, (member_apply, p, s) in enumerate(zip(applies, params, model_state)):
      member = ids == t
      rows = jnp.argsort(~member, stable=True)[:cap]  # its examples first, in batch order
      valid = jnp.arange(cap) < jnp.sum(member)
      key = None if rng is None else jax.random.fold_in(rng, t)
      out, new_s = member_apply(p, s, jax.tree.map(lambda a, r=rows: a[r], x), train=train,
                                rng=key)
      new_states.append(new_s)
      if logits is None:
        logits = jnp.zeros((b, *out.logits.shape[1:]), out.logits.dtype)
      elif out.logits.shape[1:] != logits.shape[1:]:
        raise ValueError(f"teacher {t}'s logits {out.logits.shape[1:]} differ from teacher 0's "
                         f"{logits.shape[1:]}; routed teachers need one vocabulary")
      keep = valid.reshape((cap,) + (1,) * (logits.ndim - 1))
      logits = logits.at[rows].set(jnp.where(keep, out.logits.astype(logits.dtype), logits[rows]))
      routed = routed.at[rows].set(routed[rows] | valid)
    return Outputs(logits=logits, features={"routed": routed}), tuple(new_states)

  return Model(apply=apply, params=tuple(t.params for t in teachers),
               model_state=tuple(t.model_state for t in teachers), taps=(), name=name)

"""Several teachers, one per example: a batch's ``teacher_id`` picks whose outputs each example
is distilled from."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

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

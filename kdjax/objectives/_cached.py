"""KD against teacher outputs read from the batch (a teacher cache): no teacher forward.

The teacher's top-k (or all) logits, precomputed once, travel in the batch under
``TOPK_VALUES_KEY`` / ``TOPK_INDICES_KEY``; the term reads them instead of the live teacher, so
its ``needs.teacher_outputs`` is ``False`` and the state can have no teacher.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.objectives._base import Needs, Term, no_params_init, require_batch_keys, select

TOPK_VALUES_KEY = "teacher_topk_values"
TOPK_INDICES_KEY = "teacher_topk_indices"
KD_TEMPERATURE = 4.0  # The default temperature of the KD terms (kd, cached_kd).


def cached_kd(*, temperature: float = KD_TEMPERATURE, mode: str = "renormalize",
              values_key: str = TOPK_VALUES_KEY, indices_key: str = TOPK_INDICES_KEY,
              mask_key: str | None = "mask") -> Term:
  r"""KD against the teacher's cached top-k values, read from the batch: no teacher forward.

  :func:`kdjax.losses.sparse_kd` of the student's logits (``[B, C]`` per example or
  ``[B, L, V]`` per token) against ``batch[values_key]`` / ``batch[indices_key]``
  (``[..., k]``): with ``q = softmax(v / T)`` over the cached classes ``I``,

  .. math::
    \ell = T^2 \sum_{i \in I} q_i (\log q_i - \log \mathrm{softmax}(z_s / T)_i)

  averaged over the positions ``batch[mask_key]`` keeps. With every logit cached (``k = C``) it
  is Hinton KD, :func:`kdjax.objectives.kd`, exactly.

  Args:
    temperature: ``T > 0``; a ``'remainder'`` cache only at the temperature it was built with.
    mode: one of :data:`kdjax.losses.SPARSE_MODES`: ``'renormalize'`` (the values are raw
      teacher logits; any temperature works) or ``'remainder'`` (log-probabilities at this
      temperature, the mass outside the top-k matched as one more bucket).
    values_key, indices_key: the batch keys of the cached values and class indices.
    mask_key: batch key of the validity mask (per example or per token).

  Returns:
    A :class:`~kdjax.objectives.Term` whose ``needs`` name the two batch keys and no teacher
    outputs.

  References:
    G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015;
    Z. Shen, E. Xing, "A Fast Knowledge Distillation Framework for Visual Recognition" (FKD,
    stored soft labels per augmented view), 2022.
  """
  if mode not in losses.SPARSE_MODES:
    raise ValueError(f"mode must be one of {losses.SPARSE_MODES}, got {mode!r}")
  loss_utils.check_temperature(temperature)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, teacher_out, step, axis_name
    require_batch_keys(batch, (values_key, indices_key),
                       "attach the teacher's cached top-k to the batches (kdjax.teacher_cache."
                       "CachedTeacher.wrap, or kdjax.lm.TeacherCache.attach)")
    s = select(student_out, "logits", side="student")
    values = jax.lax.stop_gradient(jnp.asarray(batch[values_key]))
    mask = batch.get(mask_key) if mask_key is not None else None
    per_position = losses.sparse_kd(s, values, jnp.asarray(batch[indices_key]),
                                    temperature=temperature, mode=mode, mask=mask)
    return losses.masked_mean(per_position, mask), state, {}

  return Term(no_params_init, apply,
              Needs(batch=(values_key, indices_key), teacher_outputs=False))

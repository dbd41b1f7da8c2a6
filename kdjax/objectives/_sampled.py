"""KD against sampled teacher targets read from the batch (Gemma 3's offline recipe).

Per token, ``k`` vocabulary entries sampled from the teacher's distribution and their weights
(:func:`kdjax.lm.sample_teacher_targets`), precomputed once (a teacher cache of sampled targets,
:func:`kdjax.teacher_cache.build_token_cache`), travel in the batch under
``SAMPLED_INDICES_KEY`` / ``SAMPLED_WEIGHTS_KEY``; the term reads them instead of the live
teacher, so its ``needs.teacher_outputs`` is ``False`` and the state can have no teacher.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.objectives._base import Needs, Term, no_params_init, require_batch_keys, select

SAMPLED_INDICES_KEY = "teacher_sampled_indices"
SAMPLED_WEIGHTS_KEY = "teacher_sampled_weights"


def sampled_kd(*, temperature: float = 1.0, indices_key: str = SAMPLED_INDICES_KEY,
               weights_key: str = SAMPLED_WEIGHTS_KEY, mask_key: str | None = "mask") -> Term:
  r"""Token KD against sampled teacher targets read from the batch: no teacher forward.

  :func:`kdjax.losses.sampled_cross_entropy` of the student's logits (``[B, L, V]``, or
  ``[B, C]``) against ``batch[indices_key]`` / ``batch[weights_key]`` (``[..., k]``, sampled by
  :func:`kdjax.lm.sample_teacher_targets` at the same ``temperature``):

  .. math::
    \ell = -T^2 \sum_{i=1}^{k} w_i \log \mathrm{softmax}(z_s / T)[\mathrm{idx}_i]

  averaged over the positions ``batch[mask_key]`` keeps (a token-weighted mean).

  Args:
    temperature: ``T > 0``, the temperature the targets were sampled at.
    indices_key, weights_key: the batch keys of the sampled indices and weights.
    mask_key: batch key of the validity mask (per token or per example).

  Returns:
    A :class:`~kdjax.objectives.Term` whose ``needs`` name the two batch keys and no teacher
    outputs (use ``DistillState.create(teacher=None, ...)``).

  References:
    Gemma Team, "Gemma 3 Technical Report", 2025.
  """
  loss_utils.check_temperature(temperature)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, teacher_out, step, axis_name
    require_batch_keys(batch, (indices_key, weights_key),
                       "attach the teacher's sampled targets to the batches (a teacher cache "
                       "with config.teacher_cache.targets='sampled', or "
                       "kdjax.lm.sample_teacher_targets)")
    s = select(student_out, "logits", side="student")
    mask = batch.get(mask_key) if mask_key is not None else None
    per_token = losses.sampled_cross_entropy(
        s, jnp.asarray(batch[indices_key]),
        jax.lax.stop_gradient(jnp.asarray(batch[weights_key])), temperature=temperature,
        mask=mask)
    return losses.masked_mean(per_token, mask), state, {}

  return Term(no_params_init, apply,
              Needs(batch=(indices_key, weights_key), teacher_outputs=False))

"""Contrastive losses: a positive scored against negatives drawn from a memory.

Scores are unnormalised log scores ``s / tau`` (a similarity over a temperature), positive first.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kdjax.losses import _utils


def nce_loss(log_scores: jax.typing.ArrayLike, log_z: jax.typing.ArrayLike,
             num_data: int) -> jax.Array:
  r"""CRD's noise-contrastive estimation loss, per example, from unnormalised log scores.

  With :math:`P_k = \exp(s_k / \tau) / Z`, :math:`m = K` negatives and the noise density
  :math:`P_n = 1 / N`:

  .. math::
    \ell = -\log \frac{P_0}{P_0 + m P_n} - \sum_{k=1}^{K} \log \frac{m P_n}{P_k + m P_n}

  computed in log space (``logaddexp``), so it is finite for any score.

  Args:
    log_scores: ``[B, 1 + K]`` log scores :math:`s_k / \tau`, the positive first.
    log_z: the scalar :math:`\log Z`.
    num_data: :math:`N`, the number of examples the negatives are drawn from.

  Returns:
    ``[B]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.nce_loss(jnp.zeros((2, 5)), jnp.log(4.0), num_data=16).shape
    (2,)

  References:
    Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020
    (the contrast memory's NCE criterion).
  """
  log_scores, log_z = _utils.as_float(log_scores, log_z)
  if log_scores.ndim != 2 or log_scores.shape[-1] < 2:
    raise ValueError(f"nce_loss needs log scores [batch, 1 + K] with K >= 1 negatives, got shape "
                     f"{log_scores.shape}")
  k = log_scores.shape[-1] - 1
  log_p = log_scores - log_z
  log_m_pn = jnp.asarray(math.log(k / num_data), log_p.dtype)
  pos = log_p[:, 0] - jnp.logaddexp(log_p[:, 0], log_m_pn)
  neg = log_m_pn - jnp.logaddexp(log_p[:, 1:], log_m_pn)
  return -(pos + jnp.sum(neg, axis=-1))

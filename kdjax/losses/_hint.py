"""Hint losses with a shape to them: factors, activation boundaries, margins, and the teacher's head.

Factor transfer (FT), activation boundaries (AB), the overhaul of feature distillation (OFD) and
SRD's feature-plus-head loss. The trainable parts these methods use (paraphraser, translator,
connectors, projector) are term adapters in :mod:`kdjax.objectives`; the functions here are the
pure losses between the arrays those adapters produce. Feature maps are channel-last.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from kdjax.losses import _utils
from kdjax.losses._feature import match_spatial


def factor_transfer(student_factor: jax.typing.ArrayLike,
                    teacher_factor: jax.typing.ArrayLike,
                    *,
                    p: int = 1,
                    channel_power: int | None = None) -> jax.Array:
  r"""Factor transfer: a p-norm between the L2-normalised student and teacher factors.

  .. math::
    \ell_b = \frac1D \sum_d \left| \frac{F_s[b]}{\|F_s[b]\|_2} - \frac{F_t[b]}{\|F_t[b]\|_2}
    \right|_d^{\,p}

  over the ``D`` entries of each flattened factor (``F / max(||F||, 1e-12)``). With
  ``channel_power=q`` the factor is first reduced to a spatial map ``mean_c F[x, c]^q``, as
  RepDistiller's implementation does. The larger map is adaptive-average-pooled to the smaller's
  resolution when they differ (:func:`match_spatial`).

  Args:
    student_factor: the translator's output on the student's features, ``[batch, *spatial, C]``.
    teacher_factor: the paraphraser's encoding of the teacher's features,
      ``[batch, *spatial', C']`` (``C' == C`` unless ``channel_power`` is set).
    p: 1 (the paper's L1) or 2.
    channel_power: ``None`` (the paper: the whole factor) or the exponent ``q`` of RepDistiller's
      channel reduction (``f.pow(p1).mean(1)``, ``p1 = 2``).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.arange(1.0, 17.0).reshape(1, 2, 2, 4)
    >>> losses.factor_transfer(f, 3.0 * f)
    Array([0.], dtype=float32)

  References:
    J. Kim, S. Park, N. Kwak, "Paraphrasing Complex Network: Network Compression via Factor
    Transfer", NeurIPS 2018. Checked against RepDistiller ``distiller_zoo/FT.py``
    (``factor_loss``; its ``factor`` is ``channel_power=2``) and the paper's equation (3).

  Convention: mean over entries (``nn.L1Loss``'s default), per example.
  """
  if p not in (1, 2):
    raise ValueError(f"p must be 1 (the paper's L1) or 2, got {p}")
  s, t = _utils.as_float(student_factor, teacher_factor)
  if s.ndim < 2 or s.shape[0] != t.shape[0]:
    raise ValueError(f"factor_transfer needs [batch, ...] factors of the same batch, got shapes "
                     f"{s.shape} and {t.shape}")
  if s.ndim >= 3 and t.ndim == s.ndim:
    s, t = match_spatial(s, t)
  if channel_power is not None:
    s = jnp.mean(s**channel_power, axis=-1)
    t = jnp.mean(t**channel_power, axis=-1)
  s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
  if s.shape != t.shape:
    raise ValueError(f"factor_transfer: student factors flatten to {s.shape} but teacher factors "
                     f"to {t.shape}; give the translator the paraphraser's factor width")
  diff = jnp.abs(_utils.l2_normalize(s, axis=1) - _utils.l2_normalize(t, axis=1))
  return jnp.mean(diff**p, axis=1)


def activation_boundary(student_preact: jax.typing.ArrayLike,
                        teacher_preact: jax.typing.ArrayLike,
                        *,
                        margin: float = 1.0) -> jax.Array:
  r"""Activation-boundary loss: the student's neurons switch on and off where the teacher's do.

  A squared hinge with margin :math:`\mu` on the student's pre-activations ``s``, wherever the
  teacher's pre-activations ``t`` are on (``t > 0``) or off (``t <= 0``):

  .. math::
    \ell_b = \sum_x (s_x + \mu)^2 [s_x > -\mu,\ t_x \le 0] + (s_x - \mu)^2 [s_x \le \mu,\ t_x > 0]

  over every non-batch entry ``x``.

  Args:
    student_preact: the student's pre-ReLU features after the connector, ``[batch, ...]``.
    teacher_preact: the teacher's pre-ReLU features, same shape.
    margin: :math:`\mu` (1 in the reference).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> losses.activation_boundary(jnp.array([[2.0, -2.0]]), jnp.array([[1.0, -1.0]]))
    Array([0.], dtype=float32)

  References:
    B. Heo, M. Lee, S. Yun, J. Y. Choi, "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019. Checked against RepDistiller
    ``distiller_zoo/AB.py`` (``criterion_alternative_l2``).

  Convention: a sum over entries per example; the reference then divides by the batch size,
  multiplies by ``3 / 1000`` and weights layer ``i`` of ``n`` by ``2^{i - n + 1}`` — those
  weights belong to the term (:func:`kdjax.objectives.activation_boundary`).
  """
  s, t = _utils.as_float(student_preact, teacher_preact)
  if s.shape != t.shape or s.ndim < 1:
    raise ValueError(f"activation_boundary: student features have shape {s.shape} but teacher "
                     f"features have {t.shape}; map the student onto the teacher's shape with a "
                     "connector (objectives.activation_boundary does)")
  m = jnp.asarray(margin, s.dtype)
  zero = jnp.zeros((), s.dtype)
  off = jnp.where((s > -m) & (t <= 0), jnp.square(s + m), zero)
  on = jnp.where((s <= m) & (t > 0), jnp.square(s - m), zero)
  return jnp.sum((off + on).reshape(s.shape[0], -1), axis=1)


def ofd_margin(bn_scale: jax.typing.ArrayLike, bn_bias: jax.typing.ArrayLike) -> jax.Array:
  r"""OFD's per-channel margin: the expected negative response of a BatchNorm'd channel.

  For a channel distributed as :math:`\mathcal N(m, s^2)` after BatchNorm (``s = |scale|``,
  ``m = bias``), the margin is :math:`E[x \mid x < 0]`:

  .. math::
    \mathrm{margin} = m - s\,\frac{\varphi(m / s)}{\Phi(-m / s)}
    \quad\text{if } \Phi(-m / s) > 10^{-3},\ \text{else } -3 s

  Args:
    bn_scale: the BatchNorm scale (``gamma``) before the teacher's ReLU, shape ``[C]``.
    bn_bias: the BatchNorm bias (``beta``), shape ``[C]``.

  Returns:
    The margin, shape ``[C]``, float32 (negative).

  References:
    B. Heo, J. Kim, S. Yun, H. Park, N. Kwak, J. Y. Choi, "A Comprehensive Overhaul of
    Feature Distillation", ICCV 2019. Checked against mdistiller ``mdistiller/distillers/OFD.py``
    (``get_margin_from_BN``).
  """
  scale, bias = _utils.as_float(bn_scale, bn_bias)
  if scale.shape != bias.shape or scale.ndim != 1:
    raise ValueError(f"ofd_margin needs the per-channel BatchNorm scale and bias, shape [C], got "
                     f"{scale.shape} and {bias.shape}")
  s = jnp.abs(scale)
  safe_s = jnp.where(s > 0, s, jnp.ones((), s.dtype))
  z = bias / safe_s
  tail = norm.cdf(-z)
  safe_tail = jnp.where(tail > 1e-3, tail, jnp.ones((), s.dtype))
  expected = bias - s * norm.pdf(z) / safe_tail
  return jnp.where(tail > 1e-3, expected, -3.0 * s)


def ofd(student_preact: jax.typing.ArrayLike,
        teacher_preact: jax.typing.ArrayLike,
        margin: jax.typing.ArrayLike) -> jax.Array:
  r"""OFD's partial L2 distance between connector-mapped student and teacher pre-ReLU features.

  With the teacher's pre-ReLU response clamped from below at the per-channel margin ``m``
  (:func:`ofd_margin`), positions where the student is already below a negative target cost
  nothing:

  .. math::
    \ell_b = \sum_x (s_x - m)^2 [s_x > m,\ t_x \le m]
           + (s_x - t_x)^2 [s_x > t_x,\ m < t_x \le 0] + (s_x - t_x)^2 [t_x > 0]

  over every non-batch entry ``x`` (``m`` broadcast along the channel axis).

  Args:
    student_preact: student features after the connector, ``[batch, ..., C]``.
    teacher_preact: teacher pre-ReLU features, same shape.
    margin: per-channel margin, shape ``[C]``.

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> t = jnp.array([[[0.5, -2.0]]])
    >>> losses.ofd(jnp.array([[[0.5, -5.0]]]), t, jnp.array([-1.0, -1.0]))
    Array([0.], dtype=float32)

  References:
    B. Heo, J. Kim, S. Yun, H. Park, N. Kwak, J. Y. Choi, "A Comprehensive Overhaul of
    Feature Distillation", ICCV 2019. Checked against mdistiller ``mdistiller/distillers/OFD.py``
    (``feat_loss``: ``torch.abs(loss).mean(dim=0).sum()``).

  Convention: a sum over entries per example (the reference's batch mean of it); the per-layer
  weights ``1 / 2^{n - i - 1}`` belong to the term.
  """
  s, t, m = _utils.as_float(student_preact, teacher_preact, margin)
  if s.shape != t.shape or s.ndim < 2:
    raise ValueError(f"ofd: student features have shape {s.shape} but teacher features have "
                     f"{t.shape}; map the student onto the teacher's shape with a connector "
                     "(objectives.ofd does)")
  if m.shape != (s.shape[-1],):
    raise ValueError(f"ofd: the margin has shape {m.shape}, expected one value per teacher "
                     f"channel, ({s.shape[-1]},); compute it with losses.ofd_margin")
  m = m.reshape((1,) * (s.ndim - 1) + m.shape)
  zero = jnp.zeros((), s.dtype)
  loss = (jnp.where((s > m) & (t <= m), jnp.square(s - m), zero)
          + jnp.where((s > t) & (t > m) & (t <= 0), jnp.square(s - t), zero)
          + jnp.where(t > 0, jnp.square(s - t), zero))
  return jnp.sum(loss.reshape(s.shape[0], -1), axis=1)


def vid_nll(teacher: jax.typing.ArrayLike, mean: jax.typing.ArrayLike,
            variance: jax.typing.ArrayLike) -> jax.Array:
  r"""VID's Gaussian negative log-likelihood of the teacher's features (without the constant).

  .. math::
    \ell_b = \frac{1}{|P| C} \sum_{p, c} \frac12 \left(\log \sigma_c^2
           + \frac{(t_{b,p,c} - \mu_{b,p,c})^2}{\sigma_c^2}\right)

  Args:
    teacher: teacher features ``[B, ..., C]`` (channel last).
    mean: the regressor's prediction of them from the student's features, same shape.
    variance: per-channel variances ``[C]``, > 0.

  Returns:
    ``[B]``: the mean over positions and channels, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> t = jnp.ones((2, 3, 3, 4))
    >>> losses.vid_nll(t, t, jnp.ones(4))
    Array([0., 0.], dtype=float32)

  References:
    S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019.
  """
  t, mean, variance = _utils.as_float(teacher, mean, variance)
  if mean.shape != t.shape or variance.shape != (t.shape[-1],):
    raise ValueError(f"vid_nll: teacher {t.shape}, mean {mean.shape} and variance "
                     f"{variance.shape}; the mean has the teacher's shape and the variance one "
                     "value per channel")
  variance = jnp.reshape(variance, (1,) * (t.ndim - 1) + (-1,))
  nll = 0.5 * (jnp.log(variance) + jnp.square(t - mean) / variance)
  return jnp.mean(nll.reshape(nll.shape[0], -1), axis=-1)


def srd(student_feat: jax.typing.ArrayLike,
        teacher_feat: jax.typing.ArrayLike,
        student_logits: jax.typing.ArrayLike,
        teacher_logits: jax.typing.ArrayLike,
        *,
        exponent: float = 1.0,
        temperature: float = 1.0) -> jax.Array:
  r"""SRD: a log feature distance plus KL between logits.

  .. math::
    L = 2 \log \sum_{b, d} |f_s[b, d] - f_t[b, d]|^{e}
        + \frac1B \sum_b \mathrm{KL}(p_t^T[b] \,\|\, p_s^T[b])

  Args:
    student_feat: the student's (projected) features, ``[batch, D]``.
    teacher_feat: the teacher's features, same shape.
    student_logits: logits for the student, ``[batch, num_classes]``; in kdjax's term these are
      the projected student features through the teacher's classifier head.
    teacher_logits: the teacher's logits, same shape.
    exponent: :math:`e`.
    temperature: :math:`T` (no ``T^2`` factor, as the reference).

  Returns:
    A scalar (batch-level: the log of a batch sum), float32. The sum is floored at the dtype's
    smallest normal number, so identical features give a large negative, finite value.

  References:
    R. Miles, K. Mikolajczyk, "Understanding the Role of the Projector in Knowledge
    Distillation", AAAI 2024. Checked against torchdistill ``torchdistill/losses/mid_level.py``
    (``SRDLoss.forward``: ``2 * log(sum(|f_s - f_t|^e)) + KLDivLoss('batchmean')``).
  """
  fs, ft, zs, zt = _utils.as_float(student_feat, teacher_feat, student_logits, teacher_logits)
  if fs.shape != ft.shape or fs.ndim < 2:
    raise ValueError(f"srd: student features have shape {fs.shape} but teacher features have "
                     f"{ft.shape}; project the student onto the teacher's width (objectives.srd "
                     "does)")
  _utils.check_logits_pair(zs, zt)
  _utils.check_temperature(temperature)
  total = jnp.sum(jnp.abs(fs - ft)**exponent)
  feat = 2.0 * jnp.log(jnp.maximum(total, jnp.finfo(total.dtype).tiny))
  kl = _utils.kl_from_log_probs(_utils.log_softmax(zt, temperature),
                                _utils.log_softmax(zs, temperature))
  return feat + jnp.mean(kl)

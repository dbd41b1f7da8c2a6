"""Conventions that follow the reference code: logit standardization, AT's sign, pooled maps.

Logit standardization and KD with it against a numpy transcription of the official code
(sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py: ``normalize`` and
``kd_loss(..., logit_stand=True)``) over 5 seeds in float32 and float64, values and gradients to
1e-4; AT against RepDistiller's ``at``/``at_loss`` (``f.pow(p)``) with ``signed=True``;
adaptive average pooling against PyTorch's bin rule, and AT / NST / FitNets on maps of different
resolution against the pool-then-compare the references do.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses, objectives
from kdjax.models import Outputs
from tests.losses.test_catalogue import np_adaptive_pool, np_match

RTOL = 1e-4
C = 100  # the paper's CIFAR-100 setting, where sample and population std differ by 0.5%


def np_normalize(logit):  # the official normalize(): torch.std is the sample std (C - 1)
  return (logit - logit.mean(-1, keepdims=True)) / (1e-7 + logit.std(-1, ddof=1, keepdims=True))


def np_kd_loss(s, t, temperature, logit_stand=True):  # kd_loss(), reduce=True
  if logit_stand:
    s, t = np_normalize(s), np_normalize(t)
  def log_softmax(z):
    z = z / temperature
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))
  lt, ls = log_softmax(t), log_softmax(s)
  return (np.exp(lt) * (lt - ls)).sum(1).mean() * temperature**2


def np_kd_loss_grad(s, t, temperature, h=1e-6):
  g = np.zeros_like(s)
  for idx in np.ndindex(s.shape):
    e = np.zeros_like(s)
    e[idx] = h
    g[idx] = (np_kd_loss(s + e, t, temperature) - np_kd_loss(s - e, t, temperature)) / (2 * h)
  return g


def _kd_standardized(s, t, temperature):
  return jnp.mean(losses.kd(losses.standardize_logits(s), losses.standardize_logits(t),
                            temperature=temperature))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_standardized_kd_matches_the_official_code(seed, dtype):
  rng = np.random.default_rng(seed)
  s, t = 3.0 * rng.standard_normal((3, C)), 3.0 * rng.standard_normal((3, C))
  with jax.enable_x64(dtype == np.float64):
    out = jax.jit(_kd_standardized, static_argnums=2)(s.astype(dtype), t.astype(dtype), 2.0)
    grad = jax.jit(jax.grad(_kd_standardized), static_argnums=2)(s.astype(dtype),
                                                                  t.astype(dtype), 2.0)
  np.testing.assert_allclose(out, np_kd_loss(s, t, 2.0), rtol=RTOL)
  if seed < 2:  # the finite-difference reference costs 2 * 300 evaluations
    np.testing.assert_allclose(grad, np_kd_loss_grad(s, t, 2.0), rtol=RTOL, atol=1e-6)
  # The population variant is a different loss at this size (what kdjax used to compute).
  pop = jnp.mean(losses.kd(losses.standardize_logits(s, ddof=0),
                           losses.standardize_logits(t, ddof=0), temperature=2.0))
  assert abs(float(pop) - np_kd_loss(s, t, 2.0)) > 1e-3 * np_kd_loss(s, t, 2.0)


def test_kd_term_standardize_uses_the_official_convention():
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal((4, 10)), rng.standard_normal((4, 10))
  term = objectives.kd(temperature=2.0, standardize=True)
  loss, _, _ = term.apply({}, {}, Outputs(jnp.asarray(s, jnp.float32)),
                          Outputs(jnp.asarray(t, jnp.float32)), {}, 0)
  np.testing.assert_allclose(loss, np_kd_loss(s, t, 2.0), rtol=RTOL)


def np_at_repdistiller(fs, ft, p):
  """RepDistiller distiller_zoo/AT.py: at(f) = normalize(f.pow(p).mean(1).view(B, -1))."""
  def at(f):
    a = (np.float64(f) ** p).mean(-1).reshape(len(f), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  fs, ft = np_match(np.float64(fs), np.float64(ft))
  return ((at(fs) - at(ft)) ** 2).mean()


@pytest.mark.parametrize("p", [2, 3])
def test_attention_transfer_signed_is_the_reference(p):
  rng = np.random.default_rng(p)
  fs, ft = rng.standard_normal((3, 4, 4, 5)), rng.standard_normal((3, 4, 4, 6))
  signed = np.mean(losses.attention_transfer(fs, ft, p=p, signed=True))
  np.testing.assert_allclose(signed, np_at_repdistiller(fs, ft, p), rtol=RTOL)
  unsigned = np.mean(losses.attention_transfer(fs, ft, p=p))
  if p % 2:  # odd p on signed features: |f|^p (kdjax's default, the paper) differs
    assert abs(unsigned - signed) > 1e-3 * signed
  else:
    np.testing.assert_allclose(unsigned, signed, rtol=1e-5)
  relu = np.maximum(fs, 0.0), np.maximum(ft, 0.0)  # after ReLU the two agree for any p
  np.testing.assert_allclose(losses.attention_transfer(*relu, p=p),
                             losses.attention_transfer(*relu, p=p, signed=True), rtol=1e-5)


@pytest.mark.parametrize("size_in, size_out", [(8, 4), (5, 3), (7, 2), (4, 4)])
def test_adaptive_avg_pool_follows_pytorch_bins(size_in, size_out):
  x = np.random.default_rng(0).standard_normal((2, size_in, size_in + 1, 3))
  out = losses.adaptive_avg_pool(x, (size_out, size_out))
  bins_w = size_out  # also a non-square case below
  np.testing.assert_allclose(out, np_adaptive_pool(x, (size_out, bins_w)), rtol=1e-5, atol=1e-6)


def test_maps_of_different_resolution_are_pooled_like_the_references():
  rng = np.random.default_rng(1)
  fs, ft = rng.standard_normal((2, 8, 8, 3)), rng.standard_normal((2, 4, 4, 5))
  np.testing.assert_allclose(np.mean(losses.attention_transfer(fs, ft, signed=True)),
                             np_at_repdistiller(fs, ft, 2), rtol=RTOL)
  ps, pt = np_match(fs, ft)
  np.testing.assert_allclose(losses.nst(fs, ft), losses.nst(ps, pt), rtol=1e-5)
  np.testing.assert_allclose(losses.attention_transfer(ft, fs), losses.attention_transfer(pt, ps),
                             rtol=1e-5)  # the teacher's map may be the larger one
  same_c = rng.standard_normal((2, 4, 4, 3))
  np.testing.assert_allclose(losses.feature_mse(fs, same_c),
                             np.mean((np_adaptive_pool(fs, (4, 4)) - same_c) ** 2, (1, 2, 3)),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="same batch size"):
    losses.nst(fs, ft[:1])


def test_fitnets_reference_regressor_is_conv3x3_bn_relu():
  rng = np.random.default_rng(2)
  s_map = jnp.asarray(rng.standard_normal((4, 4, 4, 3)), jnp.float32)
  t_map = jnp.asarray(rng.standard_normal((4, 2, 2, 6)), jnp.float32)
  s_out, t_out = (Outputs(jnp.zeros((4, 2)), {"m": s_map}), Outputs(jnp.zeros((4, 2)), {"m": t_map}))
  term = objectives.fitnets(student="m", teacher="m", adapter="conv3x3_bn_relu")
  params, state = term.init(jax.random.key(0), s_out, t_out, {})
  p = params["adapter_0"]
  assert p["conv"]["kernel"].shape == (3, 3, 3, 6) and set(p["bn"]) == {"scale", "bias"}
  loss, _, _ = term.apply(params, state, s_out, t_out, {}, 0)
  # By hand: 3x3 conv (padding 1) + batch-statistics BN + ReLU, pooled to 2x2, MSE.
  x = np.asarray(s_map, np.float64)
  k, b = np.asarray(p["conv"]["kernel"], np.float64), np.asarray(p["conv"]["bias"], np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((4, 4, 4, 6)) + b
  for i in range(3):
    for j in range(3):
      y += np.einsum("bhwc,cd->bhwd", xp[:, i:i + 4, j:j + 4], k[i, j])
  y = (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-5)
  y = np.maximum(y, 0.0)
  expected = np.mean((np_adaptive_pool(y, (2, 2)) - np.asarray(t_map)) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=RTOL)

"""The losses of CRD, VID and ReviewKD: NCE (CRD), VID's Gaussian NLL, ReviewKD's HCL.

Each against a formula written out here in numpy, and each through finite-difference gradient
checks in float64.
"""
import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses

_rng = np.random.default_rng(7)


def _np_nce(log_scores, log_z, num_data):
  # P_k = exp(s_k) / Z, noise m * P_n with m = K negatives and P_n = 1 / N.
  k = log_scores.shape[1] - 1
  p = np.exp(log_scores.astype(np.float64) - log_z)
  noise = k / num_data
  pos = np.log(p[:, 0] / (p[:, 0] + noise))
  neg = np.sum(np.log(noise / (p[:, 1:] + noise)), axis=1)
  return -(pos + neg)


def _np_vid(teacher, mean, variance):
  t, mu, var = (np.asarray(a, np.float64) for a in (teacher, mean, variance))
  nll = 0.5 * (np.log(var) + (t - mu) ** 2 / var)  # var broadcasts over the channel axis
  return nll.reshape(nll.shape[0], -1).mean(axis=1)


def test_nce_loss_matches_numpy():
  log_scores = _rng.standard_normal((3, 6)).astype(np.float32) * 3
  log_z = np.float32(2.5)
  got = jax.jit(losses.nce_loss, static_argnums=2)(log_scores, log_z, 50)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, _np_nce(log_scores, log_z, 50), rtol=2e-5)


def test_nce_loss_is_finite_for_extreme_scores():
  log_scores = np.array([[80.0, -80.0, 0.0], [-80.0, 80.0, 80.0]], np.float32)
  got = losses.nce_loss(log_scores, np.float32(0.0), 10)
  assert np.all(np.isfinite(got))


def test_vid_nll_matches_numpy():
  teacher = _rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
  mean = _rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
  variance = _rng.uniform(0.5, 2.0, 4).astype(np.float32)
  got = jax.jit(losses.vid_nll)(teacher, mean, variance)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, _np_vid(teacher, mean, variance), rtol=1e-5)
  # At the mean with unit variance the loss is 0; it grows with the squared error.
  np.testing.assert_allclose(losses.vid_nll(teacher, teacher, np.ones(4, np.float32)), 0.0,
                             atol=1e-7)


@pytest.mark.parametrize("name", ["nce_loss", "vid_nll", "hierarchical_context_loss"])
def test_gradients_match_finite_differences(name):
  with jax.enable_x64(True):
    if name == "nce_loss":
      fn = lambda s, z: losses.nce_loss(s, z, 40)
      args = (_rng.standard_normal((2, 5)), np.float64(math.log(3.0)))
    elif name == "vid_nll":
      fn = losses.vid_nll
      args = (_rng.standard_normal((2, 2, 2, 3)), _rng.standard_normal((2, 2, 2, 3)),
              _rng.uniform(0.5, 2.0, 3))
    else:
      fn = lambda a, b, c, d: losses.hierarchical_context_loss([a, b], [c, d])
      args = (_rng.standard_normal((2, 8, 8, 2)), _rng.standard_normal((2, 2, 2, 3)),
              _rng.standard_normal((2, 8, 8, 2)), _rng.standard_normal((2, 2, 2, 3)))
    check_grads(jax.jit(fn), args, order=1, modes=("rev",), eps=1e-5, atol=1e-5, rtol=1e-5)

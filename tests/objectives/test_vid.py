"""VID: the Gaussian NLL against numpy, and the learned variances train."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives
from kdjax.models import Outputs
from tests import helpers


def _softplus(x):
  return np.log1p(np.exp(x))


def _dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


@pytest.mark.parametrize("hidden", [None, 6])
def test_loss_matches_numpy(hidden):
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.standard_normal((3, 2, 2, 4)), jnp.float32)
  t = jnp.asarray(rng.standard_normal((3, 2, 2, 5)), jnp.float32)
  s_out, t_out = Outputs(jnp.zeros((3, 2)), {"f": s}), Outputs(jnp.zeros((3, 2)), {"f": t})
  eps = 1e-3
  term = objectives.vid(student="f", teacher="f", hidden=hidden, init_variance=2.0, eps=eps)
  params, state = term.init(jax.random.key(0), s_out, t_out, {})
  np.testing.assert_allclose(_softplus(np.asarray(params["log_scale_0"], np.float64)) + eps, 2.0,
                             rtol=1e-5)
  params = {**params, "log_scale_0": jnp.asarray(rng.standard_normal(5), jnp.float32)}
  loss, _, metrics = jax.jit(term.apply)(params, state, s_out, t_out, {}, jnp.int32(0))

  reg = params["regressor_0"]
  x = np.asarray(s, np.float64)
  if hidden is not None:
    x = np.maximum(_dense(reg["hidden"], x), 0.0)
  mu = _dense(reg["out"], x)
  var = _softplus(np.asarray(params["log_scale_0"], np.float64)) + eps
  expected = np.mean(0.5 * (np.log(var) + (np.asarray(t, np.float64) - mu) ** 2 / var))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["variance_0"], var.mean(), rtol=1e-5)


def test_variances_train_and_loss_falls():
  teacher = helpers.tap_mlp(0, hidden=12, taps=("stage1",))
  student = helpers.tap_mlp(1, hidden=8, taps=("stage1",))
  data = helpers.batch(n=16)
  objective = objectives.combine({"vid": objectives.vid(student="stage1", teacher="stage1")})
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(0.1, momentum=0.9), rng=jax.random.key(0),
                                    example_batch=data)
  scale0 = np.array(state.params["objective"]["vid"]["log_scale_0"])
  step = jax.jit(kdjax.distill_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, data)
    losses.append(float(metrics["vid"]))
  scale = np.asarray(state.params["objective"]["vid"]["log_scale_0"])
  assert np.abs(scale - scale0).max() > 0.05
  # The regression fits better than the initial variance of 5 says, so the variances shrink.
  assert float(metrics["vid/variance_0"]) < 5.0
  assert losses[-1] < losses[0] - 0.1, losses


def test_different_resolutions_pool_the_larger_map_like_the_reference():
  rng = np.random.default_rng(0)
  big = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  small = rng.standard_normal((2, 2, 2, 5)).astype(np.float32)
  pooled = big.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))  # 2x2 average pooling, by hand
  term = objectives.vid(student="f", teacher="f")
  outputs = lambda s, t: (Outputs(jnp.zeros((2, 3)), {"f": jnp.asarray(s)}),
                          Outputs(jnp.zeros((2, 3)), {"f": jnp.asarray(t)}))
  params, state = term.init(jax.random.key(0), *outputs(big, small), {})
  loss, _, _ = term.apply(params, state, *outputs(big, small), {}, 0)
  want, _, _ = term.apply(params, state, *outputs(pooled, small), {}, 0)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  with pytest.raises(ValueError, match="same batch size and rank"):
    term.init(jax.random.key(0), *outputs(big[:1], small), {})

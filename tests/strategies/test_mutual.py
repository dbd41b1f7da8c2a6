"""Deep mutual learning: the exact simultaneous update, and independence when kd_weight=0."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import models, objectives, strategies
from tests import helpers
from tests.strategies._np_ref import softmax


def _linear(w):
  return models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.asarray(w)})


def test_update_is_ce_plus_kl_to_the_others_current_predictions():
  """With SGD and linear students z_k = X W_k, every student moves by
  lr X^T [(softmax(z_k) - y) + kd_weight T (q_k - mean_{j!=k} q_j)] / B, all from the
  predictions made before the update (the others held fixed)."""
  rng = np.random.default_rng(0)
  b, d, c, n = 8, 6, 5, 3
  x = rng.standard_normal((b, d)).astype(np.float32)
  y = rng.integers(0, c, b).astype(np.int32)
  ws = [rng.standard_normal((d, c)).astype(np.float32) for _ in range(n)]
  temperature, kd_weight, lr = 2.0, 0.7, 0.5
  batch = {"image": x, "label": y}
  state = strategies.MutualState.create([_linear(w) for w in ws], optax.sgd(lr),
                                        jax.random.key(0), batch, temperature=temperature,
                                        kd_weight=kd_weight)
  new_state, metrics = jax.jit(strategies.mutual_step)(state, batch)

  x64 = x.astype(np.float64)
  z = [x64 @ w for w in ws]
  q = [softmax(zk / temperature) for zk in z]
  onehot = np.eye(c)[y]
  for k in range(n):
    others = np.mean([q[j] for j in range(n) if j != k], axis=0)
    dkl = kd_weight * temperature * (q[k] - others) / b
    dce = (softmax(z[k]) - onehot) / b
    expected = ws[k] - lr * x64.T @ (dce + dkl)
    np.testing.assert_allclose(new_state.params[k]["w"], expected, rtol=2e-5, atol=1e-6)
    assert np.abs(new_state.params[k]["w"] - ws[k]).max() > 1e-3  # every student moved
    # The KL metric is the mean over the others of T^2 KL(q_j || q_k).
    kls = [np.sum(q[j] * (np.log(q[j]) - np.log(q[k])), -1).mean() * temperature**2
           for j in range(n) if j != k]
    np.testing.assert_allclose(metrics[f"student_{k}/kl"], np.mean(kls), rtol=1e-5)
    np.testing.assert_allclose(metrics[f"student_{k}/accuracy"],
                               np.mean(np.argmax(z[k], -1) == y), atol=1e-6)
  assert int(new_state.step) == 1


def test_kl_gradient_wrt_student_0_matches_the_formula():
  rng = np.random.default_rng(1)
  logits = [jnp.asarray(rng.standard_normal((4, 3)), jnp.float32) for _ in range(2)]
  labels = jnp.asarray([0, 1, 2, 0], jnp.int32)
  T = 3.0

  def kl_part(z0):
    _, m = strategies.mutual_losses([z0, logits[1]], labels, {}, temperature=T, kd_weight=1.0)
    return m["student_0/kl"]

  grad = jax.grad(kl_part)(logits[0])
  q0, q1 = softmax(np.asarray(logits[0]) / T), softmax(np.asarray(logits[1]) / T)
  np.testing.assert_allclose(grad, T * (q0 - q1) / 4, rtol=1e-5, atol=1e-7)
  # No gradient flows into the other student's prediction through student 0's term.
  g_other = jax.grad(lambda z1: strategies.mutual_losses(
      [logits[0], z1], labels, {}, temperature=T, kd_weight=1.0)[1]["student_0/kl"])(logits[1])
  np.testing.assert_array_equal(g_other, np.zeros_like(g_other))


def test_kd_weight_zero_is_independent_training():
  students = [helpers.tap_mlp(1, hidden=8, batch_norm=True), helpers.tap_mlp(2, hidden=12)]
  tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
  batch = helpers.batch(n=8)
  mutual = strategies.MutualState.create(students, tx, jax.random.key(0), batch, kd_weight=0.0)
  alone = [kdjax.DistillState.create(student=s, teacher=None,
                                     objective=objectives.cross_entropy(), tx=tx,
                                     rng=jax.random.key(0), example_batch=batch)
           for s in students]
  mutual_step = jax.jit(chex.assert_max_traces(strategies.mutual_step, n=1))
  distill_step = jax.jit(kdjax.distill_step)
  for i in range(3):
    b = helpers.batch(n=8, seed=i)
    mutual, metrics = mutual_step(mutual, b)
    alone = [distill_step(s, b)[0] for s in alone]
  for k in range(2):
    chex.assert_trees_all_close(mutual.params[k], alone[k].params["student"], rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(mutual.model_states[k], alone[k].student_state, rtol=1e-5,
                                atol=1e-6)
    assert float(metrics[f"student_{k}/kl"]) > 0  # reported, just not trained on
  # With kd_weight > 0 the students do pull on each other.
  b = helpers.batch(n=8, seed=0)
  step = jax.jit(strategies.mutual_step)
  apart, _ = step(strategies.MutualState.create(students, tx, jax.random.key(0), b,
                                                kd_weight=0.0), b)
  coupled, _ = step(strategies.MutualState.create(students, tx, jax.random.key(0), b,
                                                  kd_weight=1.0), b)
  diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), coupled.params[0], apart.params[0])
  assert max(jax.tree.leaves(diff)) > 1e-4


def test_a_masked_example_with_nan_inputs_changes_nothing():
  """An example ``batch['mask']`` drops never reaches the update, even when its inputs are NaN:
  the step equals the one where that example's inputs are zeros."""
  students = [helpers.tap_mlp(1, hidden=8, batch_norm=True), helpers.tap_mlp(2, hidden=12)]
  b = helpers.batch(n=8)
  mask = np.ones(8, bool)
  mask[3] = False
  zeros, nans = (dict(b, mask=mask, image=np.asarray(b["image"]).copy()) for _ in range(2))
  zeros["image"][3] = 0.0
  nans["image"][3] = np.nan
  step = jax.jit(strategies.mutual_step)
  state = strategies.MutualState.create(students, optax.adam(1e-2), jax.random.key(0), zeros,
                                        kd_weight=1.0)
  want, want_metrics = step(state, zeros)
  got, got_metrics = step(state, nans)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got.params))
  chex.assert_trees_all_equal(got.params, want.params)
  chex.assert_trees_all_equal(got.model_states, want.model_states)
  chex.assert_trees_all_equal(got_metrics, want_metrics)


def test_create_validates_the_cohort():
  batch = helpers.batch()
  with pytest.raises(ValueError, match="at least 2 students"):
    strategies.MutualState.create([helpers.tap_mlp(0)], optax.sgd(0.1), jax.random.key(0), batch)
  with pytest.raises(ValueError, match="same num_classes"):
    strategies.MutualState.create([helpers.tap_mlp(0), helpers.tap_mlp(1, num_classes=3)],
                                  optax.sgd(0.1), jax.random.key(0), batch)

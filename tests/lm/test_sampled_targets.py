"""Sampled teacher targets (Gemma 3's offline recipe): weights against their formulas, the
sampler's law and the unbiased weighting by Monte Carlo on a tiny vocabulary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import lm, losses

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))  # a tiny teacher, vocab 5
P = np.exp(LOGITS)


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_renormalized_weights_match_formula():
  z = np.random.default_rng(0).standard_normal((2, 3, 11)).astype(np.float32)
  idx, w = lm.sample_teacher_targets(jax.random.key(1), z, 4, temperature=2.0)
  assert idx.shape == w.shape == (2, 3, 4) and idx.dtype == jnp.int32
  p = np_softmax(z / 2.0)
  picked = np.take_along_axis(p, np.asarray(idx), -1)
  np.testing.assert_allclose(w, picked / picked.sum(-1, keepdims=True), rtol=1e-5)
  for row in np.asarray(idx).reshape(-1, 4):
    assert len(set(row.tolist())) == 4  # distinct entries


def test_all_entries_give_the_teacher_distribution():
  z = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
  for weighting in ("renormalized", "unbiased"):
    idx, w = lm.sample_teacher_targets(jax.random.key(0), z, 6, weighting=weighting)
    dense = np.zeros((3, 6))
    np.put_along_axis(dense, np.asarray(idx), np.asarray(w), -1)
    np.testing.assert_allclose(dense, np_softmax(z), rtol=1e-5)


N = 20_000


def _draws(k, weighting):
  keys = jax.random.split(jax.random.key(7), N)
  z = jnp.asarray(LOGITS, jnp.float32)
  return jax.jit(jax.vmap(lambda key: lm.sample_teacher_targets(key, z, k, weighting=weighting))
                 )(keys)


def test_sampler_law_by_monte_carlo():
  idx, _ = _draws(2, "renormalized")
  idx = np.asarray(idx)
  # The first entry is a draw from p.
  first = np.bincount(idx[:, 0], minlength=5) / N
  np.testing.assert_allclose(first, P, atol=4 * np.sqrt(P * (1 - P) / N).max())
  # Inclusion probability of v in a sample of 2 without replacement, in proportion to p:
  # P(v first) + sum_u P(u first) P(v second | u first).
  incl = np.array([P[v] + sum(P[u] * P[v] / (1 - P[u]) for u in range(5) if u != v)
                   for v in range(5)])
  seen = np.array([(idx == v).any(-1).mean() for v in range(5)])
  np.testing.assert_allclose(seen, incl, atol=0.015)


def test_unbiased_weighting_by_monte_carlo():
  idx, w = _draws(2, "unbiased")
  dense = np.zeros((N, 5))
  np.put_along_axis(dense, np.asarray(idx), np.asarray(w, np.float64), -1)
  mean, err = dense.mean(0), dense.std(0) / np.sqrt(N)
  assert np.all(np.abs(mean - P) < 4 * err + 1e-3), (mean, P, err)
  # So the sampled cross-entropy estimates the full one without bias.
  s = jnp.asarray(np.random.default_rng(3).standard_normal((1, 5)), jnp.float32)
  sampled = losses.sampled_cross_entropy(jnp.broadcast_to(s, (N, 5)), idx, w)
  full = float(losses.soft_cross_entropy(s, jnp.asarray(LOGITS[None], jnp.float32),
                                         temperature=1.0)[0])
  assert abs(float(sampled.mean()) - full) < 4 * float(sampled.std()) / np.sqrt(N)
  # Gemma 3's renormalised target is biased toward the likely entries (sums to 1, mean != p).
  idx, w = _draws(2, "renormalized")
  dense = np.zeros((N, 5))
  np.put_along_axis(dense, np.asarray(idx), np.asarray(w, np.float64), -1)
  assert dense.mean(0)[0] > P[0] + 0.05


def test_bad_arguments():
  z = jnp.zeros((2, 5))
  with pytest.raises(ValueError, match="k must be an integer in"):
    lm.sample_teacher_targets(jax.random.key(0), z, 6)
  with pytest.raises(ValueError, match="weighting"):
    lm.sample_teacher_targets(jax.random.key(0), z, 2, weighting="topk")
  with pytest.raises(TypeError, match="floating"):
    lm.sample_teacher_targets(jax.random.key(0), jnp.zeros((2, 5), jnp.int32), 2)


def test_sampled_kd_term_reads_the_batch():
  from kdjax.models import Outputs
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 3, 9)), jnp.float32)
  idx, w = lm.sample_teacher_targets(jax.random.key(0), logits[::-1], 4, temperature=2.0)
  mask = jnp.array([[True, True, False], [True, False, False]])
  batch = {"mask": mask, "teacher_sampled_indices": idx, "teacher_sampled_weights": w}
  term = lm.sampled_kd_term(temperature=2.0)
  loss, _, _ = jax.jit(lambda s: term.apply({}, {}, Outputs(s), None, batch, 0))(logits)
  expected = losses.masked_mean(
      losses.sampled_cross_entropy(logits, idx, w, temperature=2.0, mask=mask), mask)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="teacher_sampled_weights"):
    term.apply({}, {}, Outputs(logits), None, {"teacher_sampled_indices": idx}, 0)


@pytest.mark.slow
def test_sampled_kd_term_in_the_step_without_teacher():
  import optax
  import kdjax
  from kdjax import models, objectives
  vocab, length = 11, 6
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (4, length)).astype(np.int32)
  teacher_logits = jnp.asarray(rng.standard_normal((4, length, vocab)), jnp.float32)
  idx, w = lm.sample_teacher_targets(jax.random.key(0), teacher_logits, 3)
  batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1),
           "mask": np.ones((4, length), bool), "teacher_sampled_indices": np.asarray(idx),
           "teacher_sampled_weights": np.asarray(w)}
  student = models.create("transformer_lm", num_classes=vocab, input_shape=(length,),
                          rng=jax.random.key(1), vocab_size=vocab, d_model=16, n_layers=1,
                          n_heads=2, max_len=length, dropout_rate=0.0)
  term = lm.sampled_kd_term()
  assert term.needs.batch == ("teacher_sampled_indices", "teacher_sampled_weights")
  assert not term.needs.teacher_outputs
  state = kdjax.DistillState.create(student=student, teacher=None,
                                    objective=objectives.combine({"kd": (term, 1.0)}),
                                    tx=optax.sgd(0.1), rng=jax.random.key(0), example_batch=batch,
                                    input_key="tokens", label_key="targets")
  _, metrics = jax.jit(kdjax.distill_step)(state, batch)
  out, _ = student.apply(student.params, student.model_state, tokens, train=False, rng=None)
  expected = losses.masked_mean(losses.sampled_cross_entropy(out.logits, idx, w))
  np.testing.assert_allclose(metrics["kd"], expected, rtol=1e-5)

"""generalized_jsd against an independent numpy formula; chunked_divergence against it."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import kdjax
from kdjax import lm, losses, models, objectives


def _np_gjsd(s, t, beta, temperature, mask=None):
  """TRL's generalized JSD written out in float64 numpy: masked token mean, no T^2."""
  s, t = np.asarray(s, np.float64) / temperature, np.asarray(t, np.float64) / temperature
  ps = np.exp(s - s.max(-1, keepdims=True)); ps /= ps.sum(-1, keepdims=True)
  pt = np.exp(t - t.max(-1, keepdims=True)); pt /= pt.sum(-1, keepdims=True)
  kl = lambda p, q: np.sum(p * (np.log(p) - np.log(q)), -1)  # noqa: E731
  if beta == 0:
    per = kl(pt, ps)
  elif beta == 1:
    per = kl(ps, pt)
  else:
    m = beta * pt + (1 - beta) * ps
    per = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
  mask = np.ones(per.shape, bool) if mask is None else np.asarray(mask, bool)
  return np.sum(per * mask) / max(mask.sum(), 1)


def _data(shape=(2, 5, 11), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape).astype(np.float32) * 2,
          rng.normal(size=shape).astype(np.float32) * 2,
          rng.random(shape[:-1]) > 0.3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.2])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_generalized_jsd_matches_the_formula(beta, temperature):
  s, t, mask = _data()
  got = losses.generalized_jsd(s, t, beta=beta, temperature=temperature, mask=mask)
  np.testing.assert_allclose(got, _np_gjsd(s, t, beta, temperature, mask), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses.generalized_jsd(s, t, beta=beta, temperature=temperature),
                             _np_gjsd(s, t, beta, temperature), rtol=1e-5, atol=1e-7)
  # Gradients: against finite differences and against a numpy central difference of the formula.
  f = lambda s, t: losses.generalized_jsd(s, t, beta=beta, temperature=temperature,  # noqa: E731
                                          mask=mask)
  with jax.numpy_dtype_promotion("standard"):
    check_grads(f, (s, t), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
  grad = np.asarray(jax.grad(f)(s, t))
  eps, idx = 1e-3, (1, 2, 4)
  up, down = s.astype(np.float64).copy(), s.astype(np.float64).copy()
  up[idx] += eps
  down[idx] -= eps
  numeric = (_np_gjsd(up, t, beta, temperature, mask) - _np_gjsd(down, t, beta, temperature,
                                                                 mask)) / (2 * eps)
  np.testing.assert_allclose(grad[idx], numeric, rtol=1e-3, atol=1e-6)


def test_generalized_jsd_ends_and_checks():
  s, t, _ = _data()
  assert float(losses.generalized_jsd(s, s, beta=0.5)) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(losses.generalized_jsd(s, t, beta=0.0),
                             losses.masked_mean(losses.kd(s, t)), rtol=1e-5)
  with pytest.raises(ValueError, match="beta must be a number in"):
    losses.generalized_jsd(s, t, beta=1.5)
  mask = np.zeros(s.shape[:-1], bool)
  s_nan = s.copy()
  s_nan[0, 0] = np.nan
  mask[1] = True
  assert np.isfinite(float(losses.generalized_jsd(s_nan, t, mask=mask)))


def _heads(n_tokens=(3, 7), d_s=6, d_t=10, vocab=37, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  return (normal(*n_tokens, d_s), normal(d_s, vocab), normal(*n_tokens, d_t), normal(d_t, vocab),
          jnp.asarray(rng.random(n_tokens) < 0.7))


@pytest.mark.parametrize("beta,temperature,softcap", [(0.0, 1.0, None), (0.5, 2.0, None),
                                                      (1.0, 1.0, 3.0)])
def test_chunked_divergence_equals_the_plain_loss_value_and_grad(beta, temperature, softcap):
  hs, ws, ht, wt, mask = _heads()
  cap = (lambda z: z) if softcap is None else (lambda z: jnp.tanh(z / softcap) * softcap)

  def plain(hs, ws, ht, wt):
    return losses.generalized_jsd(cap(hs @ ws), cap(ht @ wt), beta=beta, temperature=temperature,
                                  mask=mask)

  def chunked(hs, ws, ht, wt):
    return lm.chunked_divergence(hs, ws, ht, wt, mask=mask, beta=beta, temperature=temperature,
                                 chunk_size=4, student_softcap=softcap, teacher_softcap=softcap)

  v1, g1 = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(hs, ws, ht, wt)
  v2, g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2, 3)))(hs, ws, ht, wt)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-7)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_divergence_checks_its_inputs():
  hs, ws, ht, wt, _ = _heads()
  with pytest.raises(ValueError, match="share one vocabulary"):
    lm.chunked_divergence(hs, ws, ht, wt[:, :5])
  with pytest.raises(ValueError, match="chunk_size"):
    lm.chunked_divergence(hs, ws, ht, wt, chunk_size=0)
  with pytest.raises(ValueError, match="hidden widths"):
    lm.chunked_divergence(hs, wt, ht, wt)


def test_chunked_divergence_needs_at_least_8x_less_temporary_memory():
  n, d, v = 2048, 64, 8192
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v))]

  def plain(hs, ws, ht, wt):
    return losses.generalized_jsd(hs @ ws, jax.lax.stop_gradient(ht @ wt), beta=0.5)

  def chunked(hs, ws, ht, wt):
    return lm.chunked_divergence(hs, ws, jax.lax.stop_gradient(ht), jax.lax.stop_gradient(wt),
                                 beta=0.5, chunk_size=128)

  def temp_bytes(f):
    compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(plain) >= 8 * temp_bytes(chunked)


def _decoder(seed, vocab, length, taps):
  return models.create("decoder", num_classes=vocab, input_shape=(length,),
                       rng=jax.random.key(seed), taps=taps, hidden_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64)


def _chunked_state(vocab, b, length, seed=0):
  taps = ("pre_logits", "head")
  teacher, student = _decoder(seed, vocab, length, taps), _decoder(seed + 1, vocab, length, taps)
  rng = np.random.default_rng(seed)
  batch = {"tokens": rng.integers(0, vocab, (b, length)).astype(np.int32),
           "targets": rng.integers(0, vocab, (b, length)).astype(np.int32),
           "mask": rng.random((b, length)) > 0.2}
  state = kdjax.DistillState.create(
      student=student, teacher=teacher,
      objective=objectives.combine({"kd": lm.chunked_kd_term(chunk_size=64)}),
      tx=optax.sgd(0.1), rng=jax.random.key(0), example_batch=batch, input_key="tokens",
      label_key="targets")
  return state, batch, teacher, student


def test_a_chunked_runs_metrics_are_the_argmax_of_the_full_logits():
  # 2 x 700 tokens: the predictions take three blocks of 512, the last padded.
  state, batch, teacher, student = _chunked_state(vocab=97, b=2, length=700)
  _, metrics = jax.jit(kdjax.distill_step)(state, batch)

  def argmax(model):
    out, _ = model.apply(model.params, model.model_state, batch["tokens"], train=False, rng=None)
    return np.argmax(np.asarray(out.logits), -1)

  s, t, mask = argmax(student), argmax(teacher), batch["mask"]
  np.testing.assert_allclose(metrics["accuracy"], np.mean((s == batch["targets"])[mask]),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["agreement"], np.mean((s == t)[mask]), rtol=1e-6)
  assert 0 < float(metrics["agreement"]) < 1


def test_a_chunked_runs_metrics_do_not_materialise_the_logits():
  # The accuracy and agreement of a chunked objective come from hidden states and heads, block
  # by block: the step's temporaries stay well under one [B, L, V] float32 logits array.
  b, length, vocab = 4, 512, 16384
  state, batch, _, _ = _chunked_state(vocab=vocab, b=b, length=length)
  compiled = jax.jit(kdjax.distill_step).lower(state, batch).compile()
  logits_bytes = b * length * vocab * 4
  assert compiled.memory_analysis().temp_size_in_bytes < 0.8 * logits_bytes

"""Cross-tokenizer losses (ULD, span KL) and the sampled-target cross-entropy against numpy
versions of their formulas, plus gradient checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses

RTOL, ATOL = 2e-5, 1e-6
_rng = np.random.default_rng(0)


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_uld(s, t, temperature):
  ps = -np.sort(-np_softmax(s / temperature), axis=-1)
  pt = -np.sort(-np_softmax(t / temperature), axis=-1)
  width = max(ps.shape[-1], pt.shape[-1])
  out = np.zeros(s.shape[:-1])
  for index in np.ndindex(*s.shape[:-1]):
    a, b = np.zeros(width), np.zeros(width)
    a[:ps.shape[-1]], b[:pt.shape[-1]] = ps[index], pt[index]
    out[index] = np.abs(a - b).sum()
  return out


@pytest.mark.parametrize("vs,vt,temperature", [(5, 9, 1.0), (9, 5, 2.0), (6, 6, 0.7)])
def test_uld_matches_formula(vs, vt, temperature):
  s = 2.0 * _rng.standard_normal((2, 3, vs)).astype(np.float32)
  t = 2.0 * _rng.standard_normal((2, 3, vt)).astype(np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 1]], bool)
  out = losses.uld(s, t, temperature=temperature, mask=mask)
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, mask * np_uld(s, t, temperature), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.uld(s, t, temperature=temperature),
                             np_uld(s, t, temperature), rtol=RTOL, atol=ATOL)


def test_uld_ignores_the_order_and_padding_of_a_vocabulary():
  s = _rng.standard_normal((4, 6)).astype(np.float32)
  t = np.concatenate([s[:, ::-1], np.full((4, 2), -1e4, np.float32)], axis=-1)
  np.testing.assert_allclose(losses.uld(s, t), np.zeros(4), atol=1e-6)


def test_uld_gradient():
  s = _rng.standard_normal((2, 5))
  t = _rng.standard_normal((2, 7))
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda a, b: losses.uld(a, b, temperature=1.5)), (s, t), order=1,
                modes=["rev"], atol=1e-4, rtol=1e-4)


def test_uld_refuses_unaligned_positions():
  with pytest.raises(ValueError, match="gather_positions"):
    losses.uld(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4, 5)))


def np_span_kl(s, ys, ks, t, yt, kt, num_spans, temperature, eps=1e-6):
  out = np.zeros((s.shape[0], num_spans))
  for b in range(s.shape[0]):
    for k in range(num_spans):
      log_ps = sum(np.log(np_softmax(s[b, i] / temperature)[ys[b, i]])
                   for i in range(s.shape[1]) if ks[b, i] == k)
      log_pt = sum(np.log(np_softmax(t[b, j] / temperature)[yt[b, j]])
                   for j in range(t.shape[1]) if kt[b, j] == k)
      ps = min(np.exp(log_ps), 1 - eps)
      pt = min(np.exp(log_pt), 1 - eps)
      out[b, k] = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
  return out


# Two windows: the student has 4 targets, the teacher 6; span 2 of row 0 has two student
# tokens and one teacher token; -1 marks targets in no span.
KS = np.array([[0, 1, 2, 2], [0, 0, 1, -1]], np.int32)
KT = np.array([[0, 0, 1, 2, -1, -1], [0, 1, 1, 1, 2, -1]], np.int32)
SPAN_MASK = np.array([[1, 1, 1], [1, 1, 0]], bool)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_span_kl_matches_formula(temperature):
  s = _rng.standard_normal((2, 4, 5)).astype(np.float32)
  t = _rng.standard_normal((2, 6, 3)).astype(np.float32)
  ys = _rng.integers(0, 5, (2, 4)).astype(np.int32)
  yt = _rng.integers(0, 3, (2, 6)).astype(np.int32)
  out = losses.span_kl(s, ys, KS, t, yt, KT, num_spans=3, temperature=temperature,
                       mask=SPAN_MASK)
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  ref = np_span_kl(s, ys, KS, t, yt, KT, 3, temperature)
  np.testing.assert_allclose(out, SPAN_MASK * ref, rtol=1e-4, atol=1e-6)
  assert float(out[1, 2]) == 0.0


def test_span_kl_is_zero_for_equal_likelihoods_and_clips_certain_spans():
  z = np.zeros((1, 2, 4), np.float32)  # each token 1/4: a two-token span has likelihood 1/16
  y = np.zeros((1, 2), np.int32)
  t = np.log(np.array([[[1 / 16] + [1 / 16] * 15]], np.float32))  # its token: 1/16 too
  out = losses.span_kl(z, y, np.array([[0, 0]]), t, y[:, :1], np.array([[0]]), num_spans=1)
  np.testing.assert_allclose(out, [[0.0]], atol=1e-6)
  certain = np.array([[[0.0, -1e4, -1e4]]], np.float32)  # p = 1 in float32
  out = losses.span_kl(certain, y[:, :1], np.array([[0]]), certain, y[:, :1], np.array([[0]]),
                       num_spans=1)
  assert np.isfinite(out).all() and abs(float(out[0, 0])) < 1e-6


def test_span_kl_gradient():
  s = _rng.standard_normal((2, 4, 5))
  t = _rng.standard_normal((2, 6, 3))
  ys = _rng.integers(0, 5, (2, 4)).astype(np.int32)
  yt = _rng.integers(0, 3, (2, 6)).astype(np.int32)
  fn = lambda a, b: losses.span_kl(a, ys, KS, b, yt, KT, num_spans=3, temperature=1.5,
                                   mask=SPAN_MASK)
  with jax.enable_x64(True):
    check_grads(jax.jit(fn), (s, t), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)
    masked = jax.jit(jax.grad(lambda a: fn(a, t).sum()))(s)
    assert np.all(masked[1, 3] == 0)  # a target in no span gets no gradient


def test_span_kl_names_bad_inputs():
  z = jnp.zeros((2, 4, 5))
  y = jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="student spans must be integers of shape"):
    losses.span_kl(z, y, jnp.zeros((2, 3), jnp.int32), z, y, y, num_spans=2)
  with pytest.raises(ValueError, match="num_spans must be a positive int"):
    losses.span_kl(z, y, y, z, y, y, num_spans=0)


def test_sampled_cross_entropy_matches_formula_and_soft_cross_entropy():
  s = _rng.standard_normal((2, 3, 7)).astype(np.float32)
  idx = _rng.integers(0, 7, (2, 3, 4)).astype(np.int32)  # repeats allowed
  w = _rng.uniform(0, 1, (2, 3, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
  out = losses.sampled_cross_entropy(s, idx, w, temperature=2.0, mask=mask)
  log_p = np.log(np_softmax(s / 2.0))
  ref = -4.0 * np.sum(w * np.take_along_axis(log_p, idx, -1), -1)
  np.testing.assert_allclose(out, mask * ref, rtol=RTOL, atol=ATOL)
  t = _rng.standard_normal((2, 3, 7)).astype(np.float32)
  full = np.broadcast_to(np.arange(7, dtype=np.int32), (2, 3, 7))
  np.testing.assert_allclose(
      losses.sampled_cross_entropy(s, full, np_softmax(t / 2.0).astype(np.float32),
                                   temperature=2.0),
      losses.soft_cross_entropy(s, t, temperature=2.0), rtol=1e-5)


def test_sampled_cross_entropy_gradient():
  s = _rng.standard_normal((2, 3, 7))
  idx = _rng.integers(0, 7, (2, 3, 4)).astype(np.int32)
  w = _rng.uniform(0, 1, (2, 3, 4))
  with jax.enable_x64(True):
    fn = jax.jit(lambda a, b: losses.sampled_cross_entropy(a, idx, b, temperature=1.5))
    check_grads(fn, (s, w), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def np_next_byte_kl(s, t, first_byte, temperature):
  p = np_softmax(t / temperature)
  q_tokens = np_softmax(s / temperature)
  q = np.zeros(p.shape)
  for v, b in enumerate(first_byte):  # The student's mass on each first byte, entry by entry.
    if b >= 0:
      q[..., b] += q_tokens[..., v]
  return (p * (np.log(p) - np.log(q))).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_next_byte_kl_matches_formula(temperature):
  first_byte = np.array([0, 2, 1, 0, -1, 3, 2, 1], np.int32)  # 8 student entries, 4 bytes
  s = 2.0 * _rng.standard_normal((2, 3, 8)).astype(np.float32)
  t = 2.0 * _rng.standard_normal((2, 3, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 1]], bool)
  out = losses.next_byte_kl(s, t, first_byte, temperature=temperature, mask=mask)
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  want = np_next_byte_kl(s, t, first_byte, temperature)
  np.testing.assert_allclose(out, mask * want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.next_byte_kl(s, t, first_byte, temperature=temperature),
                             want, rtol=RTOL, atol=ATOL)


def test_next_byte_kl_is_zero_when_the_student_spells_the_teachers_bytes():
  # Entries 'a', 'ab', 'b', 'ba' over bytes 'a', 'b': any split of the teacher's byte mass.
  q = np.array([[0.1, 0.5, 0.3, 0.1]])
  t = np.log(np.array([[0.6, 0.4]], np.float32))
  out = losses.next_byte_kl(np.log(q).astype(np.float32), t, np.array([0, 0, 1, 1]))
  np.testing.assert_allclose(out, [0.0], atol=1e-6)


def test_next_byte_kl_gradient():
  first_byte = np.array([0, 1, 1, 2, 0])
  s = _rng.standard_normal((2, 5))
  t = _rng.standard_normal((2, 3))
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda a, b: losses.next_byte_kl(a, b, first_byte, temperature=1.5)),
                (s, t), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_next_byte_kl_names_bad_inputs():
  s, t = jnp.zeros((2, 5)), jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="first_byte must be integers of shape"):
    losses.next_byte_kl(s, t, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="gather_positions"):
    losses.next_byte_kl(s, jnp.zeros((3, 3)), jnp.zeros((5,), jnp.int32))

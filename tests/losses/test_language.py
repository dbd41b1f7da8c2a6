"""Token-level (language-model) losses against float64 numpy versions of their formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

RTOL, ATOL = 2e-4, 1e-6
BATCH, LENGTH, VOCAB = 2, 3, 6
_rng = np.random.default_rng(0)
S = (2.0 * _rng.standard_normal((BATCH, LENGTH, VOCAB))).astype(np.float32)
T_ = (2.0 * _rng.standard_normal((BATCH, LENGTH, VOCAB))).astype(np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.int32)  # last token of the second sequence is padding
ATT_S = jax.nn.softmax(jnp.asarray(_rng.standard_normal((BATCH, 2, LENGTH, 4)), jnp.float32))
ATT_T = jax.nn.softmax(jnp.asarray(_rng.standard_normal((BATCH, 2, LENGTH, 4)), jnp.float32))


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def kl(p, q):
  return np.sum(p * np.log(p / q), -1)


# Per-token divergences of the student's (ps) and teacher's (pt) distributions, before T^2.
REFERENCES = {
    "kd": lambda ps, pt, a: kl(pt, ps),
    "reverse_kd": lambda ps, pt, a: kl(ps, pt),
    "jensen_shannon": lambda ps, pt, a: (kl(pt, (ps + pt) / 2) + kl(ps, (ps + pt) / 2)) / 2,
    "skew_kl": lambda ps, pt, a: kl(pt, a * pt + (1 - a) * ps),
    "skew_reverse_kl": lambda ps, pt, a: kl(ps, a * ps + (1 - a) * pt),
}


def ref_token(name, s, t, T, alpha=0.1):
  return T**2 * REFERENCES[name](np_softmax(s / T), np_softmax(t / T), alpha)


# The response losses serve [B, L, V] logits with a [B, L] mask as they are.
TOKEN_LOSSES = ["kd", "reverse_kd", "jensen_shannon", "skew_kl", "skew_reverse_kl"]


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_token_loss_matches_formula_and_masks(name):
  fn = getattr(losses, name)
  out = fn(S, T_, temperature=2.0, mask=MASK)
  assert out.shape == (BATCH, LENGTH) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, MASK * ref_token(name, S, T_, 2.0), rtol=RTOL, atol=ATOL)
  assert out[1, 2] == 0.0
  np.testing.assert_allclose(fn(S, T_, temperature=2.0), ref_token(name, S, T_, 2.0),
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_skew_kl_matches_formula_for_other_alphas(alpha):
  np.testing.assert_allclose(losses.skew_kl(S, T_, alpha=alpha),
                             ref_token("skew_kl", S, T_, 1.0, alpha), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.skew_reverse_kl(S, T_, alpha=alpha),
                             ref_token("skew_reverse_kl", S, T_, 1.0, alpha), rtol=RTOL,
                             atol=ATOL)


def test_skew_with_alpha_zero_is_plain_kl():
  np.testing.assert_allclose(losses.skew_kl(S, T_, alpha=0.0), losses.kd(S, T_),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.skew_reverse_kl(S, T_, alpha=0.0),
                             losses.reverse_kd(S, T_), rtol=1e-5)


def test_padding_with_non_finite_values_returns_zero_and_finite_gradients():
  t = T_.copy()
  t[1, 2] = np.nan
  s = S.copy()
  s[1, 2] = -np.inf
  v, i = losses.topk_teacher_logits(T_, 3, log_probs=True)
  v = v.at[1, 2].set(jnp.nan)
  cases = {name: (lambda s, name=name: getattr(losses, name)(s, t, mask=MASK))
           for name in TOKEN_LOSSES}
  cases["sparse_kd"] = lambda s: losses.sparse_kd(s, v, i, mode="remainder", mask=MASK)
  cases["hidden_mse"] = lambda s: losses.hidden_mse(s, t, mask=MASK)
  for name, fn in cases.items():
    value, grad = jax.jit(lambda s, fn=fn: (fn(s), jax.grad(lambda s: fn(s).sum())(s)))(s)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), name
    assert value[1, 2] == 0.0, name
    np.testing.assert_array_equal(grad[1, 2], 0.0, err_msg=name)


# Sparse top-k teachers --------------------------------------------------------------------

def test_topk_teacher_logits_returns_the_largest_entries():
  values, indices = losses.topk_teacher_logits(T_, 3)
  order = np.argsort(-T_, axis=-1)[..., :3]
  assert indices.dtype == jnp.int32 and values.shape == (BATCH, LENGTH, 3)
  np.testing.assert_array_equal(indices, order)
  np.testing.assert_allclose(values, np.take_along_axis(T_, order, -1), rtol=1e-6)
  log_probs, _ = losses.topk_teacher_logits(T_, 3, log_probs=True, temperature=2.0)
  np.testing.assert_allclose(log_probs, np.log(np.take_along_axis(np_softmax(T_ / 2.0), order,
                                                                  -1)), rtol=RTOL)


@pytest.mark.parametrize("mode", ["renormalize", "remainder"])
def test_sparse_kd_with_the_whole_vocabulary_is_kd(mode):
  temperature = 2.0
  values, indices = losses.topk_teacher_logits(T_, VOCAB, log_probs=mode == "remainder",
                                               temperature=temperature)
  out = losses.sparse_kd(S, values, indices, temperature=temperature, mode=mode, mask=MASK)
  np.testing.assert_allclose(out, losses.kd(S, T_, temperature=temperature, mask=MASK),
                             rtol=RTOL, atol=ATOL)


def ref_sparse(s, t, k, T, mode):
  out = np.zeros(s.shape[:-1])
  for b in range(s.shape[0]):
    for l in range(s.shape[1]):
      idx = np.argsort(-t[b, l])[:k]
      ps = np_softmax(s[b, l] / T)
      if mode == "renormalize":
        q = np_softmax(t[b, l, idx] / T)
        out[b, l] = np.sum(q * (np.log(q) - np.log(ps[idx])))
      else:
        q = np_softmax(t[b, l] / T)[idx]
        r_t, r_s = 1 - q.sum(), 1 - ps[idx].sum()
        out[b, l] = np.sum(q * np.log(q / ps[idx])) + r_t * np.log(r_t / r_s)
  return T**2 * out


@pytest.mark.parametrize("mode", ["renormalize", "remainder"])
def test_sparse_kd_matches_formula(mode):
  k, temperature = 3, 1.5
  values, indices = losses.topk_teacher_logits(T_, k, log_probs=mode == "remainder",
                                               temperature=temperature)
  out = losses.sparse_kd(S, values, indices, temperature=temperature, mode=mode)
  assert out.shape == (BATCH, LENGTH)
  np.testing.assert_allclose(out, ref_sparse(S, T_, k, temperature, mode), rtol=RTOL, atol=ATOL)


def test_sparse_kd_zero_when_student_equals_teacher():
  values, indices = losses.topk_teacher_logits(T_, 3, log_probs=True)
  np.testing.assert_allclose(losses.sparse_kd(T_, values, indices, mode="remainder"), 0.0,
                             atol=1e-6)


# Reductions, hidden states, attention -----------------------------------------------------

def test_masked_mean():
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_allclose(losses.masked_mean(values, MASK), (0 + 1 + 2 + 3 + 4) / 5)
  np.testing.assert_allclose(losses.masked_mean(values), 2.5)
  assert losses.masked_mean(values, np.zeros((2, 3), bool)) == 0.0


def test_hidden_mse_matches_formula():
  expected = np.mean((np.float64(S) - np.float64(T_))**2, -1) * MASK
  np.testing.assert_allclose(losses.hidden_mse(S, T_, mask=MASK), expected, rtol=RTOL)


def test_attention_kl_matches_formula():
  s, t = np.float64(ATT_S), np.float64(ATT_T)
  expected = np.mean(np.sum(t * np.log(t / s), -1), axis=1) * MASK
  out = losses.attention_kl(ATT_S, ATT_T, mask=MASK)
  assert out.shape == (BATCH, LENGTH)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.attention_kl(ATT_T, ATT_T), 0.0, atol=1e-6)


def test_attention_kl_is_finite_where_probabilities_are_zero():
  # Padded keys carry probability exactly 0 on both sides (masked softmax).
  t = ATT_T.at[..., -1].set(0.0)
  s = ATT_S.at[..., -1].set(0.0)
  value, grad = jax.jit(jax.value_and_grad(lambda s: losses.attention_kl(s, t).sum()))(s)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_attention_mse_matches_formula():
  s, t = np.float64(ATT_S), np.float64(ATT_T)
  expected = np.mean((s - t)**2, axis=(1, 3)) * MASK
  np.testing.assert_allclose(losses.attention_mse(ATT_S, ATT_T, mask=MASK), expected,
                             rtol=RTOL)


# Errors -------------------------------------------------------------------------------------

def test_errors_name_the_fix():
  values, indices = losses.topk_teacher_logits(T_, 3)
  with pytest.raises(ValueError, match="mode must be"):
    losses.sparse_kd(S, values, indices, mode="topk")
  with pytest.raises(ValueError, match="k must be an integer"):
    losses.topk_teacher_logits(T_, VOCAB + 1)
  with pytest.raises(ValueError, match="integer vocabulary indices"):
    losses.sparse_kd(S, values, indices.astype(jnp.float32))
  with pytest.raises(ValueError, match="share the leading axes"):
    losses.sparse_kd(S[:1], values, indices)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.sparse_kd(S, values, indices, temperature=0.0)
  with pytest.raises(ValueError, match="mask has shape"):
    losses.kd(S, T_, mask=MASK[:, :2])
  with pytest.raises(ValueError, match="mask has shape"):
    losses.masked_mean(np.ones((2, 3), np.float32), MASK[:1])
  with pytest.raises(ValueError, match="give both models the same num_classes"):
    losses.reverse_kd(S, T_[..., :5])
  with pytest.raises(ValueError, match="alpha must be in"):
    losses.skew_kl(S, T_, alpha=1.5)
  for name in TOKEN_LOSSES:
    with pytest.raises(ValueError, match="temperature must be > 0"):
      getattr(losses, name)(S, T_, temperature=-1.0)
  with pytest.raises(ValueError, match="adapter"):
    losses.hidden_mse(S, T_[..., :5])
  with pytest.raises(ValueError, match="same number of heads"):
    losses.attention_kl(ATT_S, ATT_T[:, :1])
  with pytest.raises(ValueError, match=r"\[batch, heads, query_length, key_length\]"):
    losses.attention_mse(ATT_S[:, 0], ATT_T[:, 0])

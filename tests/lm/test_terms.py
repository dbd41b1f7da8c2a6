"""Language-model terms against float64 numpy versions of their formulas, masked by padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import lm
from kdjax.models import Outputs

B, L, V = 2, 5, 7
RTOL, ATOL = 2e-4, 1e-6
_rng = np.random.default_rng(0)
S = (2.0 * _rng.standard_normal((B, L, V))).astype(np.float32)
T_ = (2.0 * _rng.standard_normal((B, L, V))).astype(np.float32)
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)  # right padding in sequence 1
TARGETS = _rng.integers(0, V, (B, L)).astype(np.int32)
TARGETS[~MASK] = -1  # padding targets may hold anything


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), -1)


def np_masked_mean(values, mask):
  return np.sum(values * mask) / np.sum(mask)


def np_token(name, s, t, temperature, alpha):
  ps, pt = np_softmax(s / temperature), np_softmax(t / temperature)
  if name == "token_kd":
    out = np_kl(pt, ps)
  elif name == "token_reverse_kd":
    out = np_kl(ps, pt)
  elif name == "token_jensen_shannon":
    m = 0.5 * (ps + pt)
    out = 0.5 * (np_kl(ps, m) + np_kl(pt, m))
  elif name == "skew_kl":
    out = np_kl(pt, alpha * pt + (1 - alpha) * ps)
  else:
    out = np_kl(ps, alpha * ps + (1 - alpha) * pt)
  return temperature**2 * out


def poisoned(x, mask):
  """``x`` with NaN and inf at the padded positions: the terms must not see them."""
  x = np.array(x)
  x[~mask] = np.nan
  x[~mask, ..., 0] = np.inf
  return x


def outs(s, t, s_feats=None, t_feats=None):
  return (Outputs(jnp.asarray(s), s_feats or {}), Outputs(jnp.asarray(t), t_feats or {}))


def run(term, s_out, t_out, batch, step=0):
  params, state = term.init(jax.random.key(0), s_out, t_out, batch)
  loss, _, metrics = term.apply(params, state, s_out, t_out, batch, jnp.int32(step))
  return loss, metrics, params


TOKEN_TERMS = {
    "token_kd": lambda T, a: lm.token_kd_term(T),
    "token_reverse_kd": lambda T, a: lm.token_reverse_kd_term(T),
    "token_jensen_shannon": lambda T, a: lm.token_jensen_shannon_term(T),
    "skew_kl": lambda T, a: lm.skew_kl_term(a, temperature=T),
    "skew_reverse_kl": lambda T, a: lm.skew_reverse_kl_term(a, temperature=T),
}


@pytest.mark.parametrize("name", sorted(TOKEN_TERMS))
def test_token_terms_match_formula_on_real_tokens_only(name):
  temperature, alpha = 2.0, 0.3
  term = TOKEN_TERMS[name](temperature, alpha)
  s_out, t_out = outs(poisoned(S, MASK), poisoned(T_, MASK))
  loss, _, _ = run(term, s_out, t_out, {"mask": MASK})
  expected = np_masked_mean(np.where(MASK, np_token(name, np.where(MASK[..., None], S, 0),
                                                    np.where(MASK[..., None], T_, 0),
                                                    temperature, alpha), 0), MASK)
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=ATOL)
  # No mask: the mean over every token.
  loss, _, _ = run(term, *outs(S, T_), {})
  np.testing.assert_allclose(loss, np_token(name, S, T_, temperature, alpha).mean(), rtol=RTOL,
                             atol=ATOL)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_term_ignores_padding_targets(smoothing):
  term = lm.token_cross_entropy_term(smoothing)
  loss, metrics, _ = run(term, *outs(S, T_), {"targets": TARGETS, "mask": MASK})
  log_p = np.log(np_softmax(S))
  nll = -np.take_along_axis(log_p, np.maximum(TARGETS, 0)[..., None], -1)[..., 0]
  per_token = (1 - smoothing) * nll - smoothing * log_p.mean(-1)
  np.testing.assert_allclose(loss, np_masked_mean(per_token, MASK), rtol=RTOL)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(np_masked_mean(per_token, MASK)),
                             rtol=RTOL)


def test_sequence_mask_broadcasts_and_wrong_mask_is_refused():
  term = lm.token_kd_term(1.0)
  seq_mask = np.array([True, False])
  loss, _, _ = run(term, *outs(S, T_), {"mask": seq_mask})
  np.testing.assert_allclose(loss, np_token("token_kd", S[:1], T_[:1], 1.0, 0).mean(), rtol=RTOL)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 6\) for .* of shape \(2, 5\)"):
    run(term, *outs(S, T_), {"mask": np.ones((B, L + 1), bool)})


def test_token_kd_gradient_is_t_times_prob_difference():
  temperature = 2.0
  term = lm.token_kd_term(temperature)
  t_out = Outputs(jnp.asarray(T_))
  grad = jax.grad(lambda s: term.apply({}, {}, Outputs(s), t_out, {"mask": MASK},
                                       jnp.int32(0))[0])(jnp.asarray(poisoned(S, MASK)))
  # d/dz_s T^2 KL(p_t || p_s) = T (p_s - p_t), averaged over the real tokens.
  expected = temperature * (np_softmax(S / temperature) - np_softmax(T_ / temperature))
  expected = expected * MASK[..., None] / MASK.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_skew_kl_term_finite_difference_gradients():
  term = lm.skew_kl_term(0.2, temperature=1.5)

  @jax.jit
  def loss(s, t):
    return term.apply({}, {}, Outputs(s), Outputs(t), {"mask": MASK}, jnp.int32(0))[0]

  with jax.enable_x64(True):
    check_grads(loss, (S.astype(np.float64), T_.astype(np.float64)), order=1,
                modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-5)


def test_terms_under_jit_equal_eager():
  term = lm.skew_reverse_kl_term(0.1, temperature=2.0)
  s_out, t_out = outs(S, T_)
  batch = {"mask": MASK}
  eager, _, _ = run(term, s_out, t_out, batch)
  jitted = jax.jit(term.apply)({}, {}, s_out, t_out, batch, jnp.int32(0))[0]
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("mode", ["renormalize", "remainder"])
def test_sparse_term_with_full_vocabulary_is_token_kd(mode):
  s_out, t_out = outs(poisoned(S, MASK), poisoned(T_, MASK))
  sparse, _, _ = run(lm.sparse_kd_term(V, mode=mode, temperature=2.0), s_out, t_out,
                     {"mask": MASK})
  dense, _, _ = run(lm.token_kd_term(2.0), s_out, t_out, {"mask": MASK})
  np.testing.assert_allclose(sparse, dense, rtol=RTOL, atol=ATOL)


def test_sparse_term_formulas_at_small_k():
  k, temperature = 3, 1.5
  s_out, t_out = outs(S, T_)
  order = np.argsort(-T_, axis=-1)[..., :k]
  ps = np_softmax(S / temperature)
  ps_k = np.take_along_axis(ps, order, -1)
  # renormalize: the teacher's softmax over its own top-k logits.
  q = np_softmax(np.take_along_axis(T_, order, -1) / temperature)
  renorm = temperature**2 * np.sum(q * (np.log(q) - np.log(ps_k)), -1)
  loss, _, _ = run(lm.sparse_kd_term(k, temperature=temperature), s_out, t_out, {"mask": MASK})
  np.testing.assert_allclose(loss, np_masked_mean(renorm, MASK), rtol=RTOL)
  # remainder: the teacher's full-softmax top-k plus one bucket for the rest.
  pt_k = np.take_along_axis(np_softmax(T_ / temperature), order, -1)
  rt, rs = 1 - pt_k.sum(-1), 1 - ps_k.sum(-1)
  rem = temperature**2 * (np.sum(pt_k * (np.log(pt_k) - np.log(ps_k)), -1)
                          + rt * (np.log(rt) - np.log(rs)))
  loss, _, _ = run(lm.sparse_kd_term(k, mode="remainder", temperature=temperature), s_out, t_out,
                   {"mask": MASK})
  np.testing.assert_allclose(loss, np_masked_mean(rem, MASK), rtol=RTOL)


def test_cached_sparse_term_reads_the_batch_without_a_teacher():
  k = 4
  values, indices = jax.lax.top_k(jnp.asarray(T_), k)
  batch = {"mask": MASK, lm.TOPK_VALUES_KEY: np.asarray(values),
           lm.TOPK_INDICES_KEY: np.asarray(indices, np.int32)}
  s_out, t_out = outs(S, T_)
  cached, _, _ = run(lm.cached_sparse_kd_term(temperature=2.0), s_out, None, batch)
  online, _, _ = run(lm.sparse_kd_term(k, temperature=2.0), s_out, t_out, {"mask": MASK})
  np.testing.assert_allclose(cached, online, rtol=1e-6)
  with pytest.raises(ValueError, match="TeacherCache"):
    run(lm.cached_sparse_kd_term(), s_out, None, {"mask": MASK})


# Hidden states and attention ----------------------------------------------------------------

D = 6
H_S = [_rng.standard_normal((B, L, D)).astype(np.float32) for _ in range(2)]
H_T = [_rng.standard_normal((B, L, D)).astype(np.float32) for _ in range(4)]
A_S = [np.asarray(jax.nn.softmax(jnp.asarray(_rng.standard_normal((B, 2, L, L)), jnp.float32)))
       for _ in range(2)]
A_T = [np.asarray(jax.nn.softmax(jnp.asarray(_rng.standard_normal((B, 2, L, L)), jnp.float32)))
       for _ in range(4)]


def lm_outs():
  s_feats = {**{f"blocks_{i}": H_S[i] for i in range(2)},
             **{f"blocks_{i}/attn_probs": A_S[i] for i in range(2)}}
  t_feats = {**{f"blocks_{i}": H_T[i] for i in range(4)},
             **{f"blocks_{i}/attn_probs": A_T[i] for i in range(4)}}
  return outs(S, T_, s_feats, t_feats)


def test_uniform_layer_map_and_taps():
  assert lm.uniform_layer_map(2, 4) == ((0, 1), (1, 3))
  assert lm.uniform_layer_map(3, 3) == ((0, 0), (1, 1), (2, 2))
  assert lm.uniform_layer_map(1, 3) == ((0, 2),)
  assert lm.mapped_taps(((0, 1), (1, 3)), "blocks_{}/attn_probs") == (
      ("blocks_0/attn_probs", "blocks_1/attn_probs"),
      ("blocks_1/attn_probs", "blocks_3/attn_probs"))
  with pytest.raises(ValueError, match="more layers"):
    lm.uniform_layer_map(4, 2)


def test_hidden_terms_match_formulas_over_mapped_layers():
  layer_map = lm.uniform_layer_map(2, 4)
  s_out, t_out = lm_outs()
  batch = {"mask": MASK}
  mse, _, _ = run(lm.hidden_mse_term("blocks_{}", "blocks_{}", layer_map=layer_map), s_out, t_out,
                  batch)
  cos, _, _ = run(lm.hidden_cosine_term("blocks_{}", "blocks_{}", layer_map=layer_map), s_out,
                  t_out, batch)
  exp_mse = exp_cos = 0.0
  for i, j in layer_map:
    s, t = H_S[i].astype(np.float64), H_T[j].astype(np.float64)
    exp_mse += np_masked_mean(np.mean((s - t) ** 2, -1), MASK)
    cosine = np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    exp_cos += np_masked_mean(1 - cosine, MASK)
  np.testing.assert_allclose(mse, exp_mse, rtol=RTOL)
  np.testing.assert_allclose(cos, exp_cos, rtol=RTOL)


def test_hidden_mse_linear_adapter_projects_the_student():
  s_out = Outputs(jnp.asarray(S), {"h": jnp.asarray(H_S[0][..., :4])})  # width 4 vs teacher 6
  t_out = Outputs(jnp.asarray(T_), {"h": jnp.asarray(H_T[0])})
  with pytest.raises(ValueError, match="adapter='linear'"):
    run(lm.hidden_mse_term("h", "h"), s_out, t_out, {"mask": MASK})
  loss, _, params = run(lm.hidden_mse_term("h", "h", adapter="linear"), s_out, t_out,
                        {"mask": MASK})
  w = np.asarray(params["adapter_0"]["out"]["kernel"], np.float64)
  b = np.asarray(params["adapter_0"]["out"]["bias"], np.float64)
  assert w.shape == (4, D)
  projected = H_S[0][..., :4].astype(np.float64) @ w + b
  expected = np_masked_mean(np.mean((projected - H_T[0]) ** 2, -1), MASK)
  np.testing.assert_allclose(loss, expected, rtol=RTOL)


def test_attention_terms_match_formulas_and_ignore_padded_queries():
  layer_map = ((0, 1), (1, 3))
  s_out, t_out = lm_outs()
  # Garbage in the padded queries of the student must not matter.
  for i in range(2):
    s_out.features[f"blocks_{i}/attn_probs"] = jnp.asarray(
        np.where(MASK[:, None, :, None], A_S[i], np.nan))
  batch = {"mask": MASK}
  akl, _, _ = run(lm.attention_kl_term(layer_map=layer_map), s_out, t_out, batch)
  amse, _, _ = run(lm.attention_mse_term(layer_map=layer_map), s_out, t_out, batch)
  amean, _, _ = run(lm.attention_kl_term(layer_map=layer_map, head_reduction="mean"), s_out,
                    t_out, batch)
  exp_kl = exp_mse = exp_mean = 0.0
  for i, j in layer_map:
    a_s, a_t = A_S[i].astype(np.float64), A_T[j].astype(np.float64)
    per_query = np.mean(np.sum(a_t * (np.log(a_t) - np.log(a_s)), -1), 1)  # [B, L]
    exp_kl += np_masked_mean(per_query, MASK)
    exp_mse += np_masked_mean(np.mean((a_s - a_t) ** 2, axis=(1, 3)), MASK)
    m_s, m_t = a_s.mean(1), a_t.mean(1)
    exp_mean += np_masked_mean(np.sum(m_t * (np.log(m_t) - np.log(m_s)), -1), MASK)
  np.testing.assert_allclose(akl, exp_kl, rtol=RTOL)
  np.testing.assert_allclose(amse, exp_mse, rtol=RTOL)
  np.testing.assert_allclose(amean, exp_mean, rtol=RTOL)


def test_bad_arguments_name_the_fix():
  with pytest.raises(ValueError, match="temperature"):
    lm.token_kd_term(0.0)
  with pytest.raises(ValueError, match="mode"):
    lm.sparse_kd_term(3, mode="top")
  with pytest.raises(ValueError, match="pair up"):
    lm.hidden_mse_term(("a", "b"), ("a",))
  with pytest.raises(ValueError, match="template"):
    lm.attention_kl_term("blocks_0/attn_probs", layer_map=((0, 1),))


def test_hidden_cosine_gradients_ignore_non_finite_padding():
  term = lm.hidden_cosine_term("h", "h")
  t_out = Outputs(jnp.asarray(T_), {"h": jnp.asarray(poisoned(H_T[0], MASK))})

  def loss(h):
    return term.apply({}, {}, Outputs(jnp.asarray(S), {"h": h}), t_out, {"mask": MASK},
                      jnp.int32(0))[0]

  grad = jax.grad(loss)(jnp.asarray(poisoned(H_S[0], MASK)))
  assert np.isfinite(grad).all() and not np.any(grad[~MASK])
  assert np.abs(grad[MASK]).sum() > 0

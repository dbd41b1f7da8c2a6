"""Masks as an argument of the base losses: one function for [B, C] and [B, L, V] inputs.

Every masked loss is checked against its float64 numpy formula, written here independently of
kdjax; masked positions are exactly 0 even when they hold NaN or inf, and so are their gradients.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses

B, L, V = 2, 4, 5
_rng = np.random.default_rng(7)
S3 = (2.0 * _rng.standard_normal((B, L, V))).astype(np.float32)
T3 = (2.0 * _rng.standard_normal((B, L, V))).astype(np.float32)
MASK2 = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)  # right padding in sequence 1
LABELS2 = _rng.integers(0, V, (B, L)).astype(np.int32)
LABELS2[~MASK2] = -1  # padding labels may hold anything
S2, T2 = S3[:, 0], T3[:, 0]  # [B, C] classification logits
MASK1 = np.array([True, False])
LABELS1 = LABELS2[:, 0]
RTOL, ATOL = 2e-5, 1e-6


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(log_p, log_q):
  return np.sum(np.exp(log_p) * (log_p - log_q), -1)


def np_loss(name, s, t, temperature=2.0, labels=None, alpha=0.3, beta=2.0):
  """Per-position loss in float64, from the papers' formulas."""
  ls, lt = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
  t2 = temperature**2
  if name == "kd":
    return t2 * np_kl(lt, ls)
  if name == "reverse_kd":
    return t2 * np_kl(ls, lt)
  if name == "jensen_shannon":
    log_m = np.log((np.exp(ls) + np.exp(lt)) / 2)
    return t2 * (np_kl(lt, log_m) + np_kl(ls, log_m)) / 2
  if name == "soft_cross_entropy":
    return -t2 * np.sum(np.exp(lt) * ls, -1)
  if name == "logit_mse":
    return np.mean((np.float64(s) - np.float64(t))**2, -1)
  if name == "skew_kl":
    log_mix = np.log(alpha * np.exp(lt) + (1 - alpha) * np.exp(ls))
    return t2 * np_kl(lt, log_mix)
  if name == "skew_reverse_kl":
    log_mix = np.log(alpha * np.exp(ls) + (1 - alpha) * np.exp(lt))
    return t2 * np_kl(ls, log_mix)
  if name == "dkd":
    out = np.zeros(s.shape[:-1])
    for idx in np.ndindex(*s.shape[:-1]):
      y = labels[idx]
      ps, pt = np.exp(ls[idx]), np.exp(lt[idx])
      bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
      others = [c for c in range(s.shape[-1]) if c != y]
      hs = np_log_softmax(np.float64(s[idx][others]) / temperature)
      ht = np_log_softmax(np.float64(t[idx][others]) / temperature)
      out[idx] = t2 * (alpha * np.sum(bt * np.log(bt / bs)) + beta * np_kl(ht, hs))
    return out
  raise ValueError(name)


PAIR_LOSSES = {
    "kd": lambda s, t, m: losses.kd(s, t, temperature=2.0, mask=m),
    "reverse_kd": lambda s, t, m: losses.reverse_kd(s, t, temperature=2.0, mask=m),
    "jensen_shannon": lambda s, t, m: losses.jensen_shannon(s, t, temperature=2.0, mask=m),
    "soft_cross_entropy": lambda s, t, m: losses.soft_cross_entropy(s, t, temperature=2.0,
                                                                    mask=m),
    "logit_mse": lambda s, t, m: losses.logit_mse(s, t, mask=m),
    "skew_kl": lambda s, t, m: losses.skew_kl(s, t, alpha=0.3, temperature=2.0, mask=m),
    "skew_reverse_kl": lambda s, t, m: losses.skew_reverse_kl(s, t, alpha=0.3, temperature=2.0,
                                                              mask=m),
}


def poisoned(x, mask):
  """``x`` with NaN and inf at the masked positions: the losses must not see them."""
  x = np.array(x)
  x[~mask] = np.nan
  x[~mask, ..., 0] = np.inf
  return x


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_token_logits_with_token_mask_match_the_numpy_formula(name):
  out = PAIR_LOSSES[name](poisoned(S3, MASK2), poisoned(T3, MASK2), MASK2)
  assert out.shape == (B, L) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out)[~MASK2], 0.0)  # exactly 0, not NaN
  np.testing.assert_allclose(out, np.where(MASK2, np_loss(name, S3, T3), 0.0), rtol=RTOL,
                             atol=ATOL)


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_class_logits_with_example_mask_and_sequence_mask(name):
  fn = PAIR_LOSSES[name]
  # [B, C] logits, [B] mask.
  out = fn(poisoned(S2, MASK1), T2, MASK1)
  assert out.shape == (B,)
  np.testing.assert_allclose(out, np.where(MASK1, np_loss(name, S2, T2), 0.0), rtol=RTOL,
                             atol=ATOL)
  assert out[1] == 0.0
  # [B, L, V] logits, [B] mask: one flag per sequence, broadcast over its tokens.
  out = fn(S3, T3, MASK1)
  np.testing.assert_allclose(out, np.where(MASK1[:, None], np_loss(name, S3, T3), 0.0),
                             rtol=RTOL, atol=ATOL)
  # No mask: every position.
  np.testing.assert_allclose(fn(S3, T3, None), np_loss(name, S3, T3), rtol=RTOL, atol=ATOL)


def test_dkd_and_cross_entropy_with_masks_and_padding_labels():
  s, t = poisoned(S3, MASK2), poisoned(T3, MASK2)
  out = jax.jit(lambda s, t: losses.dkd(s, t, LABELS2, alpha=0.3, beta=2.0, temperature=2.0,
                                        mask=MASK2))(s, t)
  expected = np_loss("dkd", S3, T3, labels=np.where(MASK2, LABELS2, 0))
  np.testing.assert_allclose(out, np.where(MASK2, expected, 0.0), rtol=1e-4, atol=ATOL)
  np.testing.assert_array_equal(np.asarray(out)[~MASK2], 0.0)
  eps = 0.2
  ce = losses.cross_entropy(s, LABELS2, label_smoothing=eps, mask=MASK2)
  log_p = np_log_softmax(S3)
  nll = -np.take_along_axis(log_p, np.maximum(LABELS2, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(ce, np.where(MASK2, (1 - eps) * nll - eps * log_p.mean(-1), 0.0),
                             rtol=RTOL, atol=ATOL)
  ce1 = losses.cross_entropy(S2, LABELS1, mask=MASK1)
  assert ce1.shape == (B,) and ce1[1] == 0.0
  np.testing.assert_allclose(ce1[0], -np_log_softmax(S2[0])[LABELS1[0]], rtol=RTOL)


def test_masked_mean_of_masked_kd_is_the_numpy_token_mean():
  per_token = losses.kd(S3, T3, temperature=2.0, mask=MASK2)
  expected = np.sum(np.where(MASK2, np_loss("kd", S3, T3), 0.0)) / MASK2.sum()
  np.testing.assert_allclose(losses.masked_mean(per_token, MASK2), expected, rtol=RTOL)
  # A [B] sequence mask on [B, L] values keeps whole sequences.
  np.testing.assert_allclose(losses.masked_mean(per_token, MASK1),
                             np.mean(np.asarray(per_token)[0]), rtol=RTOL)
  # The batch form used by terms: batch[mask_key] is the mask.
  np.testing.assert_allclose(losses.masked_mean(per_token, {"pad": MASK2}, "pad"), expected,
                             rtol=RTOL)
  np.testing.assert_allclose(losses.masked_mean(per_token, {"label": LABELS2}), np.mean(per_token),
                             rtol=RTOL)
  # Bool values count as 0/1 (accuracies); a mask keeping nothing gives 0.
  hits = np.array([[True, False, True, True], [False, True, True, True]])
  np.testing.assert_allclose(losses.masked_mean(hits, MASK2), 4 / 6)  # 3 + 1 of 4 + 2 kept
  assert losses.masked_mean(per_token, np.zeros((B, L), bool)) == 0.0


def test_masked_gradients_are_zero_and_finite_at_padding():
  s, t = jnp.asarray(poisoned(S3, MASK2)), jnp.asarray(poisoned(T3, MASK2))

  @jax.jit
  def grads(s):
    g = {}
    for name in ("kd", "soft_cross_entropy", "skew_reverse_kl"):  # all share one masking path
      fn = PAIR_LOSSES[name]
      g[name] = jax.grad(lambda s, fn=fn: losses.masked_mean(fn(s, t, MASK2), MASK2))(s)
    g["dkd"] = jax.grad(lambda s: losses.dkd(s, t, LABELS2, mask=MASK2).sum())(s)
    g["cross_entropy"] = jax.grad(lambda s: losses.cross_entropy(s, LABELS2, mask=MASK2,
                                                                 label_smoothing=0.1).sum())(s)
    return g

  for name, g in grads(s).items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), name
    np.testing.assert_array_equal(g[~MASK2], 0.0, err_msg=name)
    assert np.abs(g[MASK2]).sum() > 0, name


def test_masked_losses_pass_finite_difference_gradient_checks():
  def total(s, t):
    out = losses.masked_mean(losses.kd(s, t, temperature=1.5, mask=MASK2), MASK2)
    return out + losses.masked_mean(losses.dkd(s, t, LABELS2, mask=MASK2), MASK1)

  with jax.enable_x64(True):
    check_grads(jax.jit(total), (S3.astype(np.float64), T3.astype(np.float64)), order=1,
                modes=("rev",), eps=1e-5, atol=1e-5, rtol=1e-5)


# Errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_a_mask_of_another_shape_is_refused_naming_both_shapes(name):
  fn = PAIR_LOSSES[name]
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1\) .* shape \(2,\)"):
    fn(S2, T2, MASK1[:, None])  # [B, 1] for [B] values: no silent broadcast
  with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) .* shape \(2, 4\)"):
    fn(S3, T3, MASK2[:, :3])
  with pytest.raises(ValueError, match=r"mask has shape \(4,\)"):
    fn(S3, T3, MASK2[0])


def test_other_losses_refuse_wrong_masks_too():
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1\)"):
    losses.dkd(S2, T2, LABELS1, mask=MASK1[:, None])
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1\)"):
    losses.cross_entropy(S2, LABELS1, mask=MASK1[:, None])
  with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) for the values of shape "
                                       r"\(2, 4\)"):
    losses.masked_mean(np.ones((B, L), np.float32), MASK2[:, :3])
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1\)"):
    losses.masked_mean(np.ones((B,), np.float32), {"mask": MASK1[:, None]})


@pytest.mark.parametrize("dtype, kind", [(np.int32, "integer"), (np.bool_, "boolean"),
                                         (np.complex64, "complex")])
def test_non_floating_logits_are_a_type_error(dtype, kind):
  bad = S2.astype(dtype)
  for fn in (lambda: losses.kd(bad, T2), lambda: losses.kd(S2, bad),
             lambda: losses.cross_entropy(bad, LABELS1),
             lambda: losses.dkd(bad, T2, LABELS1), lambda: losses.skew_kl(bad, T2)):
    with pytest.raises(TypeError, match=f"must be floating-point, got {kind} dtype"):
      fn()
  with pytest.raises(TypeError, match="floating-point"):
    jax.jit(losses.logit_mse)(bad, T2)


def test_an_empty_batch_is_a_value_error():
  for fn in (lambda: losses.kd(S2[:0], T2[:0]), lambda: losses.kd(S3[:, :0], T3[:, :0]),
             lambda: losses.cross_entropy(S2[:0], LABELS1[:0]),
             lambda: losses.masked_mean(np.zeros((0,), np.float32))):
    with pytest.raises(ValueError, match="empty"):
      fn()


@pytest.mark.parametrize("temperature", [0.0, -4.0, float("inf"), float("nan"), 0])
def test_bad_python_temperatures_raise_even_under_jit(temperature):
  with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
    losses.kd(S2, T2, temperature=temperature)
  with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
    jax.jit(lambda s, t: losses.jensen_shannon(s, t, temperature=temperature))(S2, T2)
  with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
    losses.skew_kl(S3, T3, temperature=jnp.float32(temperature))


def test_a_traced_temperature_is_left_to_run_time_checks():
  out = jax.jit(lambda t: losses.kd(S2, T2, temperature=t))(jnp.float32(2.0))
  np.testing.assert_allclose(out, np_loss("kd", S2, T2, 2.0), rtol=RTOL, atol=ATOL)

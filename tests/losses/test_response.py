"""Response-based losses against float64 numpy versions of their formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

B, C = 4, 6
RTOL, ATOL = 2e-4, 1e-6


def _logits(seed, shape=(B, C), scale=2.0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


S, T_ = _logits(0), _logits(1)
LABELS = np.array([0, 5, 2, 2], np.int32)


# float64 references, written from the formulas ---------------------------------------------

def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_softmax(z):
  return np.exp(np_log_softmax(z))


def np_logsumexp(z):
  z = np.asarray(z, np.float64)
  m = z.max()
  return m + np.log(np.exp(z - m).sum())


def ref_kd(s, t, T):
  pt, ps = np_softmax(t / T), np_softmax(s / T)
  return T**2 * np.sum(pt * np.log(pt / ps), -1)


def ref_soft_ce(s, t, T):
  return -T**2 * np.sum(np_softmax(t / T) * np.log(np_softmax(s / T)), -1)


def ref_reverse_kd(s, t, T):
  pt, ps = np_softmax(t / T), np_softmax(s / T)
  return T**2 * np.sum(ps * np.log(ps / pt), -1)


def ref_js(s, t, T):
  pt, ps = np_softmax(t / T), np_softmax(s / T)
  m = (ps + pt) / 2
  return T**2 * (np.sum(pt * np.log(pt / m), -1) + np.sum(ps * np.log(ps / m), -1)) / 2


def ref_dkd(s, t, y, alpha, beta, T):
  out = []
  for i in range(len(y)):
    zs, zt = np.float64(s[i]) / T, np.float64(t[i]) / T
    rest = [c for c in range(zs.shape[0]) if c != y[i]]

    def binary(z):  # log [p_gt, 1 - p_gt]; 1 - p_gt as the non-target mass, never 1 - p.
      return np.array([z[y[i]] - np_logsumexp(z), np_logsumexp(z[rest]) - np_logsumexp(z)])

    bs, bt = binary(zs), binary(zt)
    tckd = np.sum(np.exp(bt) * (bt - bs))
    qs, qt = np_log_softmax(zs[rest]), np_log_softmax(zt[rest])
    nckd = np.sum(np.exp(qt) * (qt - qs))
    out.append(T**2 * (alpha * tckd + beta * nckd))
  return np.array(out)


def ref_dist(s, t, beta, gamma, T):
  ys, yt = np_softmax(s / T), np_softmax(t / T)

  def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)

  inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
  intra = 1 - np.mean([pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
  return T**2 * (beta * inter + gamma * intra)


# Values ------------------------------------------------------------------------------------

DIVERGENCES = {
    "kd": (losses.kd, ref_kd),
    "soft_cross_entropy": (losses.soft_cross_entropy, ref_soft_ce),
    "reverse_kd": (losses.reverse_kd, ref_reverse_kd),
    "jensen_shannon": (losses.jensen_shannon, ref_js),
}


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_matches_formula(name, temperature):
  fn, ref = DIVERGENCES[name]
  out = fn(S, T_, temperature=temperature)
  assert out.shape == (B,) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref(S, T_, temperature), rtol=RTOL, atol=ATOL)


def test_logit_mse_matches_formula():
  expected = np.mean((np.float64(S) - np.float64(T_))**2, -1)
  np.testing.assert_allclose(losses.logit_mse(S, T_), expected, rtol=RTOL)


@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_formula(alpha, beta, temperature):
  out = losses.dkd(S, T_, LABELS, alpha=alpha, beta=beta, temperature=temperature)
  assert out.shape == (B,)
  np.testing.assert_allclose(out, ref_dkd(S, T_, LABELS, alpha, beta, temperature),
                             rtol=RTOL, atol=ATOL)


def test_dkd_terms_are_separately_weighted():
  tckd = losses.dkd(S, T_, LABELS, alpha=1.0, beta=0.0)
  nckd = losses.dkd(S, T_, LABELS, alpha=0.0, beta=1.0)
  both = losses.dkd(S, T_, LABELS, alpha=2.0, beta=3.0)
  np.testing.assert_allclose(both, 2 * tckd + 3 * nckd, rtol=1e-5)
  assert np.all(tckd > 0) and np.all(nckd > 0)


def test_dkd_ignores_the_target_logit_in_the_non_target_term():
  # Moving only the student's target logit changes TCKD but must leave NCKD unchanged.
  moved = S.copy()
  moved[np.arange(B), LABELS] += 3.0
  nckd = lambda s: losses.dkd(s, T_, LABELS, alpha=0.0, beta=1.0)
  np.testing.assert_allclose(nckd(moved), nckd(S), rtol=1e-5)


def test_dist_matches_formula():
  out = losses.dist(S, T_, beta=1.0, gamma=2.0, temperature=2.0)
  assert out.shape == ()
  np.testing.assert_allclose(out, ref_dist(S, T_, 1.0, 2.0, 2.0), rtol=RTOL)


def test_standardize_logits_matches_formula():
  z = np.float64(S)
  mean = z.mean(-1, keepdims=True)
  # The official code: (z - mean) / (1e-7 + z.std(dim=-1)), PyTorch's std being the sample one.
  sample = np.sqrt(np.sum((z - mean)**2, -1, keepdims=True) / (C - 1))
  out = losses.standardize_logits(S)
  np.testing.assert_allclose(out, (z - mean) / (sample + 1e-7), rtol=RTOL, atol=ATOL)
  population = np.sqrt(np.mean((z - mean)**2, -1, keepdims=True))
  np.testing.assert_allclose(losses.standardize_logits(S, ddof=0), (z - mean) / (population + 1e-7),
                             rtol=RTOL, atol=ATOL)
  # Constant logits carry no information and map to zeros (with finite gradients).
  flat = jnp.ones((2, C))
  np.testing.assert_array_equal(losses.standardize_logits(flat), np.zeros((2, C)))
  g = jax.jit(jax.grad(lambda z: losses.standardize_logits(z)[:, 0].sum()))(flat)
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_formula(label_smoothing):
  logp = np_log_softmax(S)
  expected = -(1 - label_smoothing) * logp[np.arange(B), LABELS] - label_smoothing * logp.mean(-1)
  np.testing.assert_allclose(losses.cross_entropy(S, LABELS, label_smoothing=label_smoothing),
                             expected, rtol=RTOL)


# Identities ---------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_gradient_is_temperature_times_probability_gap(temperature):
  grad = jax.jit(jax.grad(lambda s: losses.kd(s, T_, temperature=temperature).sum()))(S)
  expected = temperature * (np_softmax(S / temperature) - np_softmax(T_ / temperature))
  np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("fn", [
    losses.kd, losses.reverse_kd, losses.jensen_shannon, losses.logit_mse,
    lambda s, t: losses.dkd(s, t, LABELS), lambda s, t: losses.dist(s, t, temperature=2.0),
])
def test_zero_when_student_equals_teacher(fn):
  # atol: DIST's Pearson terms carry a +1e-8 in their denominators.
  np.testing.assert_allclose(fn(T_, T_), np.zeros(np.shape(fn(S, T_))), atol=3e-5)
  assert np.all(np.asarray(fn(S, T_)) > 1e-3)


def test_soft_cross_entropy_is_kd_plus_teacher_entropy():
  temperature = 2.0
  pt = np_softmax(T_ / temperature)
  entropy = -np.sum(pt * np.log(pt), -1)
  np.testing.assert_allclose(
      losses.soft_cross_entropy(S, T_, temperature=temperature),
      losses.kd(S, T_, temperature=temperature) + temperature**2 * entropy, rtol=RTOL)


def test_dkd_finite_for_huge_bf16_logits_under_jit():
  rng = np.random.default_rng(3)
  s = jnp.asarray(rng.standard_normal((B, C)) * 1e3, jnp.bfloat16)
  t = jnp.asarray(rng.standard_normal((B, C)) * 1e3, jnp.bfloat16)
  labels = jnp.asarray(np.argmax(np.asarray(t, np.float32), -1), jnp.int32)  # confident teacher
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda s, t: losses.dkd(s, t, labels).sum(), argnums=(0, 1)))
  value, grads = value_and_grad(s, t)
  assert np.isfinite(value) and all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
  per_example = jax.jit(lambda s, t: losses.dkd(s, t, labels))(s, t)
  assert per_example.dtype == jnp.float32
  expected = ref_dkd(np.asarray(s, np.float64), np.asarray(t, np.float64), np.asarray(labels),
                     1.0, 8.0, 4.0)
  np.testing.assert_allclose(per_example, expected, rtol=1e-3, atol=1e-3)


def test_masked_vocabulary_entries_stay_finite():
  # A -inf logit (a class ruled out) has probability 0 and must not produce NaN values or grads.
  t = T_.copy()
  t[:, 0] = -np.inf
  both = S.copy()
  both[:, 0] = -np.inf
  cases = [(losses.kd, S), (losses.soft_cross_entropy, S), (losses.jensen_shannon, S),
           (losses.reverse_kd, both), (losses.kd, both)]
  for fn, s in cases:
    value, grad = jax.jit(jax.value_and_grad(lambda s: fn(s, t).sum()))(s)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), fn.__name__
  pt, ps = np_softmax(t), np_softmax(S)
  with np.errstate(divide="ignore", invalid="ignore"):
    expected = np.sum(np.where(pt > 0, pt * np.log(pt / ps), 0.0), -1)  # 0 log 0 = 0
  np.testing.assert_allclose(losses.kd(S, t), expected, rtol=RTOL)


# Errors -------------------------------------------------------------------------------------

TEMPERATURE_LOSSES = [
    losses.kd, losses.soft_cross_entropy, losses.reverse_kd, losses.jensen_shannon,
    lambda s, t, **kw: losses.dkd(s, t, LABELS, **kw), losses.dist,
]


@pytest.mark.parametrize("fn", TEMPERATURE_LOSSES)
@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_refused(fn, temperature):
  with pytest.raises(ValueError, match="temperature must be > 0"):
    fn(S, T_, temperature=temperature)


@pytest.mark.parametrize("fn", TEMPERATURE_LOSSES + [losses.logit_mse])
def test_class_count_mismatch_names_the_fix(fn):
  with pytest.raises(ValueError, match="student logits have 6 classes but teacher logits have 5; "
                     "give both models the same num_classes"):
    fn(S, T_[:, :5])
  with pytest.raises(ValueError, match="feed both models the same batch"):
    fn(S, T_[:3])


def test_bad_labels_are_refused():
  with pytest.raises(ValueError, match="labels must have shape"):
    losses.dkd(S, T_, LABELS[:3])
  with pytest.raises(ValueError, match="integer class indices"):
    losses.dkd(S, T_, LABELS.astype(np.float32))
  with pytest.raises(ValueError, match="at least 2 classes"):
    losses.dkd(S[:, :1], T_[:, :1], np.zeros(B, np.int32))
  with pytest.raises(ValueError, match="labels must have shape"):
    losses.cross_entropy(S, LABELS[:, None])
  with pytest.raises(ValueError, match="label_smoothing must be in"):
    losses.cross_entropy(S, LABELS, label_smoothing=1.5)

"""Relation-based (batch-level) losses against float64 numpy versions of their formulas."""
import jax
import numpy as np
import pytest

from kdjax import losses

RTOL, ATOL = 2e-4, 1e-7
_rng = np.random.default_rng(0)
ES = _rng.standard_normal((5, 4)).astype(np.float32)  # student embeddings [B, D_s]
ET = _rng.standard_normal((5, 6)).astype(np.float32)  # teacher embeddings [B, D_t]


def huber(x):
  return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def ref_similarity_preserving(fs, ft):
  b = fs.shape[0]

  def gram(f):
    f = np.float64(f).reshape(b, -1)
    g = f @ f.T
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

  return np.sum((gram(fs) - gram(ft))**2) / b**2


def ref_rkd_distance(es, et):
  b = es.shape[0]

  def dist(f):
    f = np.float64(f)
    d = np.zeros((b, b))
    for i in range(b):
      for j in range(b):
        if i != j:
          d[i, j] = np.sqrt(max(np.sum((f[i] - f[j])**2), 1e-12))
    return d / (d.sum() / (b * (b - 1)))

  return np.mean(huber(dist(es) - dist(et)))


def ref_rkd_angle(es, et):
  b = es.shape[0]

  def angles(f):
    f = np.float64(f)
    e = np.zeros((b, b, f.shape[1]))
    for i in range(b):
      for j in range(b):
        v = f[j] - f[i]
        if i != j:
          e[i, j] = v / np.linalg.norm(v)
    a = np.zeros((b, b, b))
    for i in range(b):
      for j in range(b):
        for k in range(b):
          a[i, j, k] = np.dot(e[i, j], e[i, k])
    return a

  return np.mean(huber(angles(es) - angles(et)))


def ref_pkt(es, et, eps=1e-7):
  def cond(f):
    f = np.float64(f)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
    s = (f @ f.T + 1) / 2
    return s / s.sum(1, keepdims=True)

  ps, pt = cond(es), cond(et)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def ref_cka(es, et):
  x, y = np.float64(es), np.float64(et)
  x, y = x - x.mean(0), y - y.mean(0)
  cka = np.linalg.norm(y.T @ x)**2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
  return 1 - cka


CASES = {
    "similarity_preserving": (losses.similarity_preserving, ref_similarity_preserving),
    "rkd_distance": (losses.rkd_distance, ref_rkd_distance),
    "rkd_angle": (losses.rkd_angle, ref_rkd_angle),
    "pkt": (losses.pkt, ref_pkt),
    "cka": (losses.cka, ref_cka),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_formula(name):
  fn, ref = CASES[name]
  out = fn(ES, ET)
  assert out.shape == ()
  np.testing.assert_allclose(out, ref(ES, ET), rtol=RTOL, atol=ATOL)


def test_feature_maps_are_flattened():
  maps_s, maps_t = ES.reshape(5, 2, 2), ET.reshape(5, 3, 2)
  for name in ("similarity_preserving", "cka"):  # all share one flattening helper
    fn, ref = CASES[name]
    np.testing.assert_allclose(fn(maps_s, maps_t), ref(ES, ET), rtol=RTOL, atol=ATOL,
                               err_msg=name)


def test_cka_batch_gram_and_feature_paths_agree_with_formula():
  # B^2 <= D_s D_t uses [B, B] Gram matrices, otherwise [D, D] cross-products.
  np.testing.assert_allclose(losses.cka(ES[:3], ET[:3]), ref_cka(ES[:3], ET[:3]), rtol=RTOL)
  np.testing.assert_allclose(losses.cka(ES[:, :2], ET[:, :2]), ref_cka(ES[:, :2], ET[:, :2]),
                             rtol=RTOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_when_student_equals_teacher(name):
  fn, _ = CASES[name]
  np.testing.assert_allclose(fn(ET, ET), 0.0, atol=1e-6)
  assert fn(ES, ET) > 1e-3


def test_invariances():
  rotation, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
  moved = (3.0 * ET @ rotation + 1.0).astype(np.float32)  # scale, rotate, shift
  for name in ("rkd_distance", "rkd_angle", "cka"):
    np.testing.assert_allclose(CASES[name][0](moved, ET), 0.0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_repeated_and_zero_embeddings_have_finite_gradients(name):
  fn, _ = CASES[name]
  repeated = ES.copy()
  repeated[1] = repeated[0]  # f_i - f_j = 0: distances and directions at 0
  repeated[2] = 0.0
  value, grad = jax.jit(jax.value_and_grad(fn))(repeated, ET)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_mismatch_is_refused(name):
  with pytest.raises(ValueError, match="feed both models the same batch"):
    CASES[name][0](ES, ET[:4])
  with pytest.raises(ValueError, match="feature axis"):
    CASES[name][0](ES[:, 0], ET[:, 0])


def test_rkd_distance_needs_two_examples():
  with pytest.raises(ValueError, match="batch of at least 2"):
    losses.rkd_distance(ES[:1], ET[:1])

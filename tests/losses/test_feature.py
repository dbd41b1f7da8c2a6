"""Feature-based losses against float64 numpy versions of their formulas."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

RTOL, ATOL = 2e-4, 1e-7
_rng = np.random.default_rng(0)
FS = _rng.standard_normal((3, 4, 4, 5)).astype(np.float32)  # student [B, H, W, C_s]
FT = _rng.standard_normal((3, 4, 4, 6)).astype(np.float32)  # teacher [B, H, W, C_t]


def ref_attention_transfer(fs, ft, p):
  out = []
  for b in range(fs.shape[0]):
    def att(f):
      a = np.mean(np.abs(np.float64(f))**p, axis=-1).ravel()
      return a / max(np.linalg.norm(a), 1e-12)
    out.append(np.mean((att(fs[b]) - att(ft[b]))**2))
  return np.array(out)


def ref_nst(fs, ft):
  out = []
  for b in range(fs.shape[0]):
    def channels(f):
      f = np.float64(f).reshape(-1, f.shape[-1])  # [N, C]
      return [f[:, c] / max(np.linalg.norm(f[:, c]), 1e-12) for c in range(f.shape[1])]

    def mean_k(xs, ys):
      return np.mean([np.dot(x, y)**2 for x in xs for y in ys])

    us, ut = channels(fs[b]), channels(ft[b])
    out.append(mean_k(ut, ut) + mean_k(us, us) - 2 * mean_k(us, ut))
  return np.array(out)


def test_feature_mse_matches_formula():
  ft = FT[..., :5]
  expected = np.mean((np.float64(FS) - np.float64(ft))**2, axis=(1, 2, 3))
  out = losses.feature_mse(FS, ft)
  assert out.shape == (3,)
  np.testing.assert_allclose(out, expected, rtol=RTOL)


# Losses of (FS, FT), whose channel counts differ -> their numpy references.
CROSS_WIDTH = {
    "attention_transfer_p2": (functools.partial(losses.attention_transfer, p=2),
                              functools.partial(ref_attention_transfer, p=2)),
    "attention_transfer_p1.5": (functools.partial(losses.attention_transfer, p=1.5),
                                functools.partial(ref_attention_transfer, p=1.5)),
    "nst": (losses.nst, ref_nst),
}


@pytest.mark.parametrize("loss, reference", CROSS_WIDTH.values(), ids=CROSS_WIDTH)
def test_cross_width_losses_match_formula(loss, reference):
  out = loss(FS, FT)
  assert out.shape == (3,)
  np.testing.assert_allclose(out, reference(FS, FT), rtol=RTOL, atol=ATOL)


def test_cosine_distance_matches_formula():
  s, t = np.float64(FS), np.float64(FT[..., :5])
  expected = 1 - np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
  out = losses.cosine_distance(FS, FT[..., :5])
  assert out.shape == (3, 4, 4)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("fn", [losses.feature_mse, losses.attention_transfer, losses.nst,
                                losses.cosine_distance])
def test_zero_when_student_equals_teacher(fn):
  np.testing.assert_allclose(fn(FT, FT), np.zeros(fn(FT, FT).shape), atol=1e-6)
  assert np.all(np.asarray(fn(FS, FT[..., :5])) > 1e-4)


def test_attention_maps_ignore_scale_and_channel_count():
  wide = np.concatenate([FS, FS], axis=-1)
  np.testing.assert_allclose(losses.attention_transfer(FS, 3.0 * wide), np.zeros(3), atol=1e-7)


@pytest.mark.parametrize("fn", [losses.attention_transfer, losses.nst, losses.cosine_distance])
def test_zero_features_have_finite_gradients(fn):
  # Dead (all-zero) activations: the L2 normalisations must not divide 0 by 0 in the gradient.
  zeros = jnp.zeros((3, 4, 4, 5))
  value, grad = jax.jit(jax.value_and_grad(lambda s: fn(s, FS).sum()))(zeros)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_shape_errors_name_the_fix():
  with pytest.raises(ValueError, match="adapter"):
    losses.feature_mse(FS, FT)
  with pytest.raises(ValueError, match="adapter"):
    losses.cosine_distance(FS, FT)
  for fn in (losses.attention_transfer, losses.nst):
    assert fn(FS, FT[:, :2]).shape == (3,)  # other resolutions: pooled (test_conventions.py)
    with pytest.raises(ValueError, match="same batch size"):
      fn(FS, FT[:2])
    with pytest.raises(ValueError, match=r"\[batch, \*spatial, channels\]"):
      fn(FS[:, 0, 0], FT[:, 0, 0])
  with pytest.raises(ValueError, match="p must be > 0"):
    losses.attention_transfer(FS, FT, p=0)

"""Dense-prediction losses against float64 NumPy versions of their formulas, plus gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses

RTOL, ATOL = 2e-4, 1e-6
_rng = np.random.default_rng(0)


def _softmax(z, axis=-1):
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _grad_check(fn, *args):
  with jax.enable_x64(True):
    check_grads(jax.jit(fn), tuple(np.float64(a) for a in args), order=1, modes=["rev"],
                atol=1e-4, rtol=1e-4)


# --- Segmentation ---------------------------------------------------------------------------

S = _rng.standard_normal((2, 3, 4, 5)).astype(np.float32)  # [B, H, W, C]
T = _rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
LABELS = _rng.integers(0, 5, (2, 3, 4)).astype(np.int32)
LABELS[0, 0, :] = 255
LABELS[1] = 255  # an example with no kept pixel


def ref_pixel_kd(s, t, labels, temp, ignore):
  out = []
  for b in range(s.shape[0]):
    vals = []
    for i in range(s.shape[1]):
      for j in range(s.shape[2]):
        if labels is not None and labels[b, i, j] == ignore:
          continue
        p = _softmax(np.float64(t[b, i, j]) / temp)
        q = _softmax(np.float64(s[b, i, j]) / temp)
        vals.append(temp**2 * np.sum(p * (np.log(p) - np.log(q))))
    out.append(np.mean(vals) if vals else 0.0)
  return np.array(out)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_pixel_kd_matches_formula(temp):
  np.testing.assert_allclose(losses.pixel_kd(S, T, temperature=temp),
                             ref_pixel_kd(S, T, None, temp, None), rtol=RTOL, atol=ATOL)
  out = losses.pixel_kd(S, T, LABELS, temperature=temp, ignore_label=255)
  assert out.shape == (2,)
  np.testing.assert_allclose(out, ref_pixel_kd(S, T, LABELS, temp, 255), rtol=RTOL, atol=ATOL)
  assert float(out[1]) == 0.0


def test_pixel_kd_ignored_pixels_reach_neither_value_nor_gradient():
  s = S.copy()
  s[0, 0, 0] = np.nan
  value, grad = jax.value_and_grad(lambda x: losses.pixel_kd(x, T, LABELS).sum())(s)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[0, 0] == 0.0)
  np.testing.assert_allclose(value, ref_pixel_kd(S, T, LABELS, 1.0, 255).sum(), rtol=RTOL)


def test_pixel_kd_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"integer map of shape \(2, 3, 4\)"):
    losses.pixel_kd(S, T, LABELS[:, :2])
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.pixel_kd(S, T, temperature=0.0)


def ref_cwd(s, t, temp):
  out = []
  for b in range(s.shape[0]):
    per_channel = []
    for c in range(s.shape[-1]):
      p = _softmax(np.float64(t[b, ..., c]).ravel() / temp)
      q = _softmax(np.float64(s[b, ..., c]).ravel() / temp)
      per_channel.append(np.sum(p * (np.log(p) - np.log(q))))
    out.append(temp**2 * np.mean(per_channel))
  return np.array(out)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_channel_wise_distillation_matches_formula(temp):
  out = losses.channel_wise_distillation(S, T, temperature=temp)
  assert out.shape == (2,)
  np.testing.assert_allclose(out, ref_cwd(S, T, temp), rtol=RTOL, atol=ATOL)


def test_channel_wise_distillation_checks_channels():
  with pytest.raises(ValueError, match="5 channels but the teacher's has 4"):
    losses.channel_wise_distillation(S, T[..., :4])


FS = _rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
FT = _rng.standard_normal((2, 4, 6, 7)).astype(np.float32)


def ref_pairwise(fs, ft, nodes):
  out = []
  for b in range(fs.shape[0]):
    def sim(f):
      h, w, c = f.shape
      nh, nw = nodes
      pooled = np.float64(f).reshape(nh, h // nh, nw, w // nw, c).mean(axis=(1, 3))
      v = pooled.reshape(-1, c)
      v = v / np.linalg.norm(v, axis=1, keepdims=True)
      return v @ v.T
    out.append(np.mean((sim(fs[b]) - sim(ft[b]))**2))
  return np.array(out)


@pytest.mark.parametrize("nodes", [None, (2, 3), (1, 2)])
def test_pairwise_similarity_distillation_matches_formula(nodes):
  out = losses.pairwise_similarity_distillation(FS, FT, nodes=nodes)
  assert out.shape == (2,)
  np.testing.assert_allclose(out, ref_pairwise(FS, FT, nodes or (4, 6)), rtol=RTOL, atol=ATOL)


def test_pairwise_similarity_distillation_rejects_too_many_nodes():
  with pytest.raises(ValueError, match=r"nodes must be \(h, w\)"):
    losses.pairwise_similarity_distillation(FS, FT, nodes=(5, 2))


def test_segmentation_gradients():
  _grad_check(lambda a, b: losses.pixel_kd(a, b, LABELS, temperature=2.0), S, T)
  _grad_check(lambda a, b: losses.channel_wise_distillation(a, b, temperature=4.0), S, T)
  _grad_check(lambda a, b: losses.pairwise_similarity_distillation(a, b, nodes=(2, 3)), FS, FT)


# --- Detection ------------------------------------------------------------------------------

HS = _rng.standard_normal((2, 3, 3, 4)).astype(np.float32)  # heatmap logits [B, h, w, K]
HT = (2.0 * _rng.standard_normal((2, 3, 3, 4))).astype(np.float32)
BS = _rng.standard_normal((2, 3, 3, 4, 6)).astype(np.float32)  # box logits [B, h, w, 4, n]
BT = (2.0 * _rng.standard_normal((2, 3, 3, 4, 6))).astype(np.float32)
W = _rng.uniform(0.0, 1.0, (2, 3, 3)).astype(np.float32)


def ref_heatmap_kd(s, t, temp, w=None):
  s, t = np.float64(s), np.float64(t)
  p, q = _sigmoid(t / temp), _sigmoid(s / temp)
  kl = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(-1) * temp**2
  w = _sigmoid(t).max(-1) if w is None else np.float64(w)
  return (w * kl).sum((1, 2)) / w.sum((1, 2))


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_heatmap_kd_matches_formula(temp):
  np.testing.assert_allclose(losses.heatmap_kd(HS, HT, temperature=temp),
                             ref_heatmap_kd(HS, HT, temp), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(losses.heatmap_kd(HS, HT, temperature=temp, weights=W),
                             ref_heatmap_kd(HS, HT, temp, W), rtol=RTOL, atol=ATOL)


def test_heatmap_kd_weights_carry_no_gradient_to_the_teacher():
  g = jax.grad(lambda t: losses.heatmap_kd(HT, t).sum())(HT)  # at s == t the KL's grad is 0
  np.testing.assert_allclose(g, np.zeros_like(HT), atol=1e-6)


def ref_ld(s, t, w, temp):
  p = _softmax(np.float64(t) / temp)
  q = _softmax(np.float64(s) / temp)
  kl = temp**2 * (p * (np.log(p) - np.log(q))).sum(-1).sum(-1)  # bins, then edges
  w = np.float64(w)
  return (w * kl).sum((1, 2)) / w.sum((1, 2))


@pytest.mark.parametrize("temp", [1.0, 10.0])
def test_localization_distillation_matches_formula(temp):
  out = losses.localization_distillation(BS, BT, W, temperature=temp)
  assert out.shape == (2,)
  np.testing.assert_allclose(out, ref_ld(BS, BT, W, temp), rtol=RTOL, atol=ATOL)


def test_localization_distillation_checks_shapes():
  with pytest.raises(ValueError, match="same n_bins"):
    losses.localization_distillation(BS, BT[..., :5], W)
  with pytest.raises(ValueError, match=r"grid's shape \(2, 3, 3\)"):
    losses.localization_distillation(BS, BT, W[:, :2])


def test_feature_imitation_matches_formula():
  fs = _rng.standard_normal((2, 3, 3, 5)).astype(np.float32)
  ft = _rng.standard_normal((2, 3, 3, 5)).astype(np.float32)
  mask = (W > 0.5).astype(np.float32)
  mask[1] = 0.0
  expected = [np.sum(mask[b][..., None] * (np.float64(fs[b]) - ft[b])**2) /
              (2 * max(mask[b].sum(), 1)) for b in range(2)]
  np.testing.assert_allclose(losses.feature_imitation(fs, ft, mask), expected, rtol=RTOL,
                             atol=ATOL)
  _grad_check(lambda a, b: losses.feature_imitation(a, b, mask), fs, ft)


def test_detection_distillation_gradients():
  # The confidence weights are a constant of the teacher (stop_gradient): check the student side.
  teacher = np.float64(HT)
  _grad_check(lambda a: losses.heatmap_kd(a, teacher, temperature=2.0), HS)
  _grad_check(lambda a, b: losses.localization_distillation(a, b, W, temperature=3.0), BS, BT)


def ref_focal(z, y, alpha=2.0, beta=4.0):
  p = _sigmoid(np.float64(z))
  pos = y >= 1.0
  terms = np.where(pos, (1 - p)**alpha * np.log(p), (1 - y)**beta * p**alpha * np.log(1 - p))
  return -terms.sum((1, 2, 3)) / np.maximum(pos.sum((1, 2, 3)), 1)


def test_heatmap_focal_loss_matches_formula():
  y = _rng.uniform(0.0, 0.9, HS.shape).astype(np.float32)
  y[0, 1, 1, 2] = 1.0
  y[1, 0, 2, 0] = y[1, 2, 2, 3] = 1.0
  np.testing.assert_allclose(losses.heatmap_focal_loss(HS, y), ref_focal(HS, y), rtol=RTOL)
  _grad_check(lambda z: losses.heatmap_focal_loss(z, y), HS)


def ref_dfl(z, d, w):
  q = _softmax(np.float64(z))
  out = []
  for b in range(z.shape[0]):
    total = 0.0
    for i, j, e in np.ndindex(*z.shape[1:4]):
      k = min(int(np.floor(d[b, i, j, e])), z.shape[-1] - 2)
      lo, hi = k + 1 - d[b, i, j, e], d[b, i, j, e] - k
      total += w[b, i, j] * -(lo * np.log(q[b, i, j, e, k]) + hi * np.log(q[b, i, j, e, k + 1]))
    out.append(total / w[b].sum())
  return np.array(out)


def test_distribution_focal_loss_matches_formula():
  d = _rng.uniform(0.0, 5.0, BS.shape[:4]).astype(np.float32)
  d[0, 0, 0, 0] = 5.0  # the last bin exactly
  np.testing.assert_allclose(losses.distribution_focal_loss(BS, d, W), ref_dfl(BS, d, W),
                             rtol=RTOL)
  _grad_check(lambda z: losses.distribution_focal_loss(z, d, W), BS)


def test_edge_distances_are_the_expected_bin():
  np.testing.assert_allclose(losses.edge_distances(BS),
                             (_softmax(np.float64(BS)) * np.arange(6)).sum(-1), rtol=RTOL)


# --- Targets and masks from boxes -------------------------------------------------------------

BOXES = np.array([[[4.0, 4.0, 12.0, 14.0], [18.0, 17.0, 31.0, 30.0], [0, 0, 0, 0]],
                  [[1.0, 20.0, 9.0, 29.0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
CLASSES = np.array([[3, 1, -1], [3, -1, -1]], np.int32)


def ref_point_targets(boxes, classes, grid, stride, num_classes, n_bins):
  h, w = grid
  heat = np.zeros((len(boxes), h, w, num_classes))
  edges = np.zeros((len(boxes), h, w, 4))
  weight = np.zeros((len(boxes), h, w))
  for b in range(len(boxes)):
    for i, j in np.ndindex(h, w):
      x, y = (j + 0.5) * stride, (i + 0.5) * stride
      best = 0.0
      for (x0, y0, x1, y1), c in zip(boxes[b], classes[b]):
        if c < 0:
          continue
        px = (np.floor((x0 + x1) / 2 / stride) + 0.5) * stride
        py = (np.floor((y0 + y1) / 2 / stride) + 0.5) * stride
        sigma = max(np.sqrt((x1 - x0) * (y1 - y0)) / 3, stride / 2)
        g = np.exp(-((x - px)**2 + (y - py)**2) / (2 * sigma**2))
        heat[b, i, j, c] = max(heat[b, i, j, c], g)
        if x0 < x < x1 and y0 < y < y1 and g > best:
          best = g
          edges[b, i, j] = np.clip(np.array([x - x0, y - y0, x1 - x, y1 - y]) / stride, 0,
                                   n_bins - 1)
      weight[b, i, j] = best
  return heat, edges, weight


def test_point_targets_match_a_loop():
  heat, edges, weight = losses.point_targets(BOXES, CLASSES, grid=(8, 8), stride=4.0,
                                             num_classes=5, n_bins=6)
  ref = ref_point_targets(BOXES, CLASSES, (8, 8), 4.0, 5, 6)
  for got, want in zip((heat, edges, weight), ref):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(heat[0, 2, 2, 3]) == 1.0  # box 0's centre (8, 9) lies in cell (2, 2)
  assert float(heat[..., 0].max()) == 0.0  # no box of class 0


def ref_imitation_mask(boxes, valid, grid, stride, sizes, psi):
  h, w = grid
  out = np.zeros((len(boxes), h, w))
  for b in range(len(boxes)):
    for g, ok in zip(boxes[b], valid[b]):
      if not ok:
        continue
      ious = np.zeros((h, w, len(sizes)))
      for i, j, a in np.ndindex(h, w, len(sizes)):
        cx, cy, half = (j + 0.5) * stride, (i + 0.5) * stride, sizes[a] / 2
        anchor = (cx - half, cy - half, cx + half, cy + half)
        iw = max(0.0, min(anchor[2], g[2]) - max(anchor[0], g[0]))
        ih = max(0.0, min(anchor[3], g[3]) - max(anchor[1], g[1]))
        inter = iw * ih
        ious[i, j, a] = inter / (sizes[a]**2 + (g[2] - g[0]) * (g[3] - g[1]) - inter)
      out[b] = np.maximum(out[b], (ious > psi * ious.max()).any(-1))
  return out


@pytest.mark.parametrize("psi", [0.3, 0.5, 0.8])
def test_imitation_mask_matches_a_loop(psi):
  got = losses.imitation_mask(BOXES, CLASSES >= 0, grid=(8, 8), stride=4.0,
                              anchor_sizes=(8.0, 16.0), psi=psi)
  np.testing.assert_array_equal(got, ref_imitation_mask(BOXES, CLASSES >= 0, (8, 8), 4.0,
                                                        (8.0, 16.0), psi))
  assert float(got[0].sum()) > float(got[1].sum()) > 0  # two objects cover more than one


def test_imitation_mask_checks_settings():
  with pytest.raises(ValueError, match=r"psi must be in \(0, 1\)"):
    losses.imitation_mask(BOXES, CLASSES >= 0, grid=(8, 8), stride=4.0, anchor_sizes=(8.0,),
                          psi=1.5)
  with pytest.raises(ValueError, match=r"validity flag \[batch, max_boxes\]"):
    losses.imitation_mask(BOXES, CLASSES[:, :2] >= 0, grid=(8, 8), stride=4.0,
                          anchor_sizes=(8.0,))


def test_losses_run_under_jit():
  f = jax.jit(lambda s, t: losses.heatmap_kd(s, t) + losses.pixel_kd(s, t)
              + losses.channel_wise_distillation(s, t))
  np.testing.assert_allclose(
      f(HS, HT), ref_heatmap_kd(HS, HT, 1.0) + ref_pixel_kd(HS, HT, None, 1.0, None)
      + ref_cwd(HS, HT, 4.0), rtol=RTOL, atol=ATOL)
  assert jnp.asarray(f(HS, HT)).dtype == jnp.float32

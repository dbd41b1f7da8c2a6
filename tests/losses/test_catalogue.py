"""CC, FSP, FT, AB, KDSVD, OFD, SRD and MLKD against numpy transcriptions of the reference code.

Each ``ref_*`` below transcribes the reference implementation named in its docstring (batch
reductions, eps and masks as there) in float64 numpy; kdjax's per-example losses are averaged
over the batch to compare. Values agree to 1e-4 relative; gradients are checked by finite
differences in float64. The tricks the references use are pinned: CC's Taylor approximation of
the RBF kernel, KDSVD's sign alignment, MLKD's scalar-weighted masks and weak-view quirk.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.stats import norm

from kdjax import losses

RTOL = 1e-4
SEEDS = range(2)


def _rng(seed):
  return np.random.default_rng(seed)


def _normalize(x, axis):  # F.normalize(p=2, eps=1e-12)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_adaptive_pool(x, out):
  """PyTorch adaptive_avg_pool2d on NHWC, by explicit loops over its bins."""
  b, h, w, c = x.shape
  y = np.zeros((b, out[0], out[1], c))
  for i in range(out[0]):
    h0, h1 = (i * h) // out[0], math.ceil((i + 1) * h / out[0])
    for j in range(out[1]):
      w0, w1 = (j * w) // out[1], math.ceil((j + 1) * w / out[1])
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


def np_match(s, t):
  if s.shape[1] > t.shape[1]:
    s = np_adaptive_pool(s, t.shape[1:3])
  elif s.shape[1] < t.shape[1]:
    t = np_adaptive_pool(t, s.shape[1:3])
  return s, t


# CC -------------------------------------------------------------------------------------------


def ref_cc(fs, ft, gamma=0.4, order=2):
  """AberHu/Knowledge-Distillation-Zoo kd_losses/cc.py: normalize, Taylor RBF, F.mse_loss."""
  def corr(f):
    f = _normalize(np.float64(f).reshape(len(f), -1), 1)
    sim = f @ f.T
    return sum(math.exp(-2 * gamma) * (2 * gamma)**p / math.factorial(p) * sim**p
               for p in range(order + 1))
  return np.mean((corr(fs) - corr(ft))**2)


@pytest.mark.parametrize("seed", SEEDS)
def test_cc_matches_reference(seed):
  r = _rng(seed)
  fs, ft = r.standard_normal((6, 5)), r.standard_normal((6, 9))
  out = losses.correlation_congruence(fs.astype(np.float32), ft.astype(np.float32))
  assert out.shape == ()
  np.testing.assert_allclose(out, ref_cc(fs, ft), rtol=RTOL)


def test_cc_taylor_order_pins_the_rbf_approximation():
  r = _rng(0)
  fs, ft = r.standard_normal((5, 4)), r.standard_normal((5, 4))

  def exact(f, gamma=0.4):  # exp(-gamma ||x - y||^2) on unit rows, from distances.
    f = _normalize(f, 1)
    d2 = np.sum((f[:, None] - f[None]) ** 2, -1)
    return np.exp(-gamma * d2)

  expected_exact = np.mean((exact(fs) - exact(ft))**2)
  got_exact = losses.correlation_congruence(fs, ft, order=None)
  got_taylor2 = losses.correlation_congruence(fs, ft, order=2)
  got_taylor8 = losses.correlation_congruence(fs, ft, order=8)
  np.testing.assert_allclose(got_exact, expected_exact, rtol=RTOL)
  np.testing.assert_allclose(got_taylor2, ref_cc(fs, ft, order=2), rtol=RTOL)
  # Order 2 is an approximation (what the paper and reference use), order 8 is the kernel.
  assert abs(float(got_taylor2) - expected_exact) > 1e-4 * expected_exact
  np.testing.assert_allclose(got_taylor8, expected_exact, rtol=1e-4)


# FSP ------------------------------------------------------------------------------------------


def ref_fsp(g_s, g_t):
  """RepDistiller distiller_zoo/FSP.py: compute_fsp (pooling the larger), mean sq, summed."""
  def compute(g):
    out = []
    for bot, top in zip(g[:-1], g[1:]):
      bot, top = np.float64(bot), np.float64(top)
      if bot.shape[1] > top.shape[1]:
        bot = np_adaptive_pool(bot, top.shape[1:3])
      elif bot.shape[1] < top.shape[1]:
        top = np_adaptive_pool(top, bot.shape[1:3])
      b = bot.reshape(len(bot), -1, bot.shape[-1])
      t = top.reshape(len(top), -1, top.shape[-1])
      out.append(np.einsum("bni,bnj->bij", t, b) / b.shape[1])
    return out
  return sum(np.mean((s - t)**2) for s, t in zip(compute(g_s), compute(g_t)))


@pytest.mark.parametrize("seed", SEEDS)
def test_fsp_matches_reference(seed):
  r = _rng(seed)
  shapes = [(3, 6, 6, 4), (3, 3, 3, 5), (3, 3, 3, 2)]
  g_s = [r.standard_normal(s) for s in shapes]
  g_t = [r.standard_normal(s) for s in shapes]
  out = losses.fsp([x.astype(np.float32) for x in g_s], [x.astype(np.float32) for x in g_t])
  assert out.shape == (3,)
  np.testing.assert_allclose(np.mean(out), ref_fsp(g_s, g_t), rtol=RTOL)


def test_fsp_refuses_different_channel_counts():
  with pytest.raises(ValueError, match="equal channel counts"):
    losses.fsp([np.ones((2, 4, 4, 3)), np.ones((2, 4, 4, 3))],
               [np.ones((2, 4, 4, 4)), np.ones((2, 4, 4, 3))])


# KDSVD ----------------------------------------------------------------------------------------


def ref_kdsvd(g_s, g_t, k=1):
  """RepDistiller distiller_zoo/KDSVD.py, with the teacher's vectors in canonical sign."""
  def svd(f, n):
    x = np.float64(f).reshape(len(f), -1, f.shape[-1])  # [B, HW, C]
    _, s, vh = np.linalg.svd(x, full_matrices=False)
    v = np.swapaxes(vh, 1, 2)[:, :, :n]
    return _normalize(v, 1), _normalize(s[:, :n], 1)

  def canonical(v):
    idx = np.argmax(np.abs(v), axis=1)[:, None, :]
    return v * np.sign(np.take_along_axis(v, idx, axis=1))

  def align(a, b):  # align_rsv
    cosine = np.einsum("bci,bcj->bij", a, b)
    best = np.max(np.abs(cosine), axis=1, keepdims=True)
    mask = np.where(best == np.abs(cosine), np.sign(cosine), 0.0)
    return a @ mask

  losses_, v_sb, v_tb = [], None, None
  for i, (fs, ft) in enumerate(zip(g_s, g_t)):
    v_t, s_t = svd(ft, k)
    v_s, _ = svd(fs, k + 3)
    v_t = canonical(v_t)
    v_s = align(v_s, v_t)
    v_t, v_s = v_t * s_t[:, None], v_s * s_t[:, None]
    if i > 0:
      s_rbf = np.exp(-(v_s[:, :, None] - v_sb[:, None]) ** 2 / 8)
      t_rbf = np.exp(-(v_t[:, :, None] - v_tb[:, None]) ** 2 / 8)
      losses_.append(np.sum((s_rbf - t_rbf) ** 2))
    v_tb, v_sb = v_t, v_s
  return sum(l / len(g_s[0]) for l in losses_)


def _kdsvd_maps(seed):
  r = _rng(seed)
  shapes = [(3, 4, 4, 6), (3, 3, 3, 5), (3, 2, 2, 5)]
  return [r.standard_normal(s) for s in shapes], [r.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("seed", SEEDS)
def test_kdsvd_matches_reference(seed):
  g_s, g_t = _kdsvd_maps(seed)
  out = losses.kdsvd(g_s, g_t)
  assert out.shape == (3,)
  np.testing.assert_allclose(np.mean(out), ref_kdsvd(g_s, g_t), rtol=RTOL)


def test_kdsvd_sign_alignment_makes_svd_signs_irrelevant():
  g_s, g_t = _kdsvd_maps(0)
  base = losses.kdsvd(g_s, g_t)
  # Negating a map negates its singular vectors (the SVD's sign choice): the student's are
  # re-aligned to the teacher's (align_rsv) and the teacher's are put in canonical sign.
  flipped_s = [g_s[0], -g_s[1], g_s[2]]
  flipped_t = [-g_t[0], g_t[1], -g_t[2]]
  np.testing.assert_allclose(losses.kdsvd(flipped_s, g_t), base, rtol=1e-4)
  np.testing.assert_allclose(losses.kdsvd(g_s, flipped_t), base, rtol=1e-4)
  # Without alignment (plain leading vector) a flip would change the value.
  assert float(jnp.max(jnp.abs(base))) > 0


def test_kdsvd_no_gradient_into_teacher():
  g_s, g_t = _kdsvd_maps(1)
  grad = jax.grad(lambda t: jnp.sum(losses.kdsvd(g_s, [t, g_t[1], g_t[2]])))(
      jnp.asarray(g_t[0], jnp.float32))
  np.testing.assert_array_equal(grad, np.zeros_like(grad))


# FT -------------------------------------------------------------------------------------------


def ref_ft_repdistiller(f_s, f_t, p1=2, p2=1):
  """RepDistiller distiller_zoo/FT.py factor_loss (pooling, f.pow(p1).mean(1), normalize)."""
  f_s, f_t = np_match(np.float64(f_s), np.float64(f_t))
  def factor(f):
    return _normalize((f**p1).mean(-1).reshape(len(f), -1), 1)
  d = factor(f_s) - factor(f_t)
  return np.abs(d).mean() if p2 == 1 else (d**p2).mean()


def ref_ft_paper(f_s, f_t):
  """The paper's eq. (3) as mmrazor's FTLoss: L1Loss of normalize(flatten(F))."""
  def factor(f):
    return _normalize(np.float64(f).reshape(len(f), -1), 1)
  return np.abs(factor(f_s) - factor(f_t)).mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_factor_transfer_matches_references(seed):
  r = _rng(seed)
  f_s, f_t = r.standard_normal((3, 4, 4, 5)), r.standard_normal((3, 4, 4, 5))
  np.testing.assert_allclose(np.mean(losses.factor_transfer(f_s, f_t)), ref_ft_paper(f_s, f_t),
                             rtol=RTOL)
  f_t2 = r.standard_normal((3, 2, 2, 7))  # other resolution and width: RepDistiller's form
  np.testing.assert_allclose(np.mean(losses.factor_transfer(f_s, f_t2, channel_power=2)),
                             ref_ft_repdistiller(f_s, f_t2), rtol=RTOL)
  np.testing.assert_allclose(np.mean(losses.factor_transfer(f_s, f_t2, channel_power=2, p=2)),
                             ref_ft_repdistiller(f_s, f_t2, p2=2), rtol=RTOL)


# AB -------------------------------------------------------------------------------------------


def ref_ab(source, target, margin=1.0):
  """RepDistiller distiller_zoo/AB.py criterion_alternative_l2 (a sum), / bsz."""
  loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)) +
          (source - margin) ** 2 * ((source <= margin) & (target > 0)))
  return np.abs(loss).sum() / len(source)


@pytest.mark.parametrize("seed", SEEDS)
def test_activation_boundary_matches_reference(seed):
  r = _rng(seed)
  s, t = 1.5 * r.standard_normal((4, 3, 3, 5)), r.standard_normal((4, 3, 3, 5))
  out = losses.activation_boundary(s.astype(np.float32), t.astype(np.float32), margin=0.7)
  assert out.shape == (4,)
  np.testing.assert_allclose(np.mean(out), ref_ab(s, t, 0.7), rtol=RTOL)


# OFD ------------------------------------------------------------------------------------------


def ref_margin(std, mean):
  """mdistiller OFD.get_margin_from_BN."""
  out = []
  for s, m in zip(std, mean):
    s = abs(s)
    if norm.cdf(-m / s) > 0.001:
      out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s)
                 + m)
    else:
      out.append(-3 * s)
  return np.array(out)


def ref_ofd(source, target, margin):
  """mdistiller OFD feat_loss: masked squares, abs, mean over batch, sum."""
  loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin))
          + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
          + (source - target) ** 2 * (target > 0))
  return np.abs(loss).mean(axis=0).sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_ofd_and_its_margin_match_reference(seed):
  r = _rng(seed)
  scale = r.uniform(0.2, 2.0, 6) * r.choice([-1, 1], 6)
  bias = np.concatenate([r.normal(0, 1, 5), [-4.5]])  # the last takes the -3 s branch
  margin = losses.ofd_margin(scale, bias)
  np.testing.assert_allclose(margin, ref_margin(scale, bias), rtol=RTOL)
  s, t = r.standard_normal((4, 3, 3, 6)), r.standard_normal((4, 3, 3, 6))
  out = losses.ofd(s, t, margin)
  assert out.shape == (4,)
  np.testing.assert_allclose(np.mean(out), ref_ofd(s, t, np.asarray(margin, np.float64)),
                             rtol=RTOL)


# SRD ------------------------------------------------------------------------------------------


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_srd(fs, ft, zs, zt, exponent, temperature):
  """torchdistill losses/mid_level.py SRDLoss.forward."""
  feat = math.log(np.sum(np.abs(fs - ft) ** exponent))
  lp_s, lp_t = _np_log_softmax(zs / temperature), _np_log_softmax(zt / temperature)
  kl = np.sum(np.exp(lp_t) * (lp_t - lp_s)) / len(zs)  # KLDivLoss(reduction='batchmean')
  return 2 * feat + kl


@pytest.mark.parametrize("seed", SEEDS)
def test_srd_matches_reference(seed):
  r = _rng(seed)
  fs, ft = r.standard_normal((4, 6)), r.standard_normal((4, 6))
  zs, zt = r.standard_normal((4, 5)), r.standard_normal((4, 5))
  for exponent, temperature in ((1.0, 1.0), (2.0, 3.0)):
    out = losses.srd(fs, ft, zs, zt, exponent=exponent, temperature=temperature)
    assert out.shape == ()
    np.testing.assert_allclose(out, ref_srd(fs, ft, zs, zt, exponent, temperature), rtol=RTOL)


# MLKD -----------------------------------------------------------------------------------------


def _softmax(z):
  return np.exp(_np_log_softmax(z))


def _np_standardize(z):  # the official normalize(): sample std, eps added to the std
  return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def ref_mlkd(sw, tw, ss, ts, temps=(4.0, 3.0, 5.0, 2.0, 6.0), logit_stand=False, reduce=True):
  """logit-standardization-KD mdistiller/distillers/MLKD.py forward_train (loss_kd+cc+bc);
  reduce=False transcribes the masks applied per row as the commented-out variant intends."""
  def kd(s, t, temp):
    if logit_stand:
      s, t = _np_standardize(s), _np_standardize(t)
    lp_s, lp_t = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
    rows = np.sum(np.exp(lp_t) * (lp_t - lp_s), 1) * temp**2
    return rows.mean() if reduce else rows

  def cc(s, t, temp):
    ps, pt = _softmax(s / temp), _softmax(t / temp)
    m = (pt.T @ pt - ps.T @ ps) ** 2
    return m.sum() / s.shape[1] if reduce else m / s.shape[1]

  def bc(s, t, temp):
    ps, pt = _softmax(s / temp), _softmax(t / temp)
    m = (pt @ pt.T - ps @ ps.T) ** 2
    return m.sum() / s.shape[0] if reduce else m / s.shape[0]

  conf = _softmax(tw).max(1)
  mask = conf <= np.percentile(conf, 50)
  class_conf = _softmax(tw).sum(0)
  class_mask = class_conf <= np.percentile(class_conf, 50)
  kd_weak = sum((kd(sw, tw, t) * mask).mean() for t in temps)
  if reduce:
    kd_strong = sum(kd(ss, ts, t) for t in temps[:3]) + sum(kd(sw, tw, t) for t in temps[3:])
  else:
    kd_strong = sum(kd(ss, ts, t).mean() for t in temps)
  cc_weak = sum((cc(sw, tw, t) * class_mask).mean() for t in temps)
  bc_weak = sum((bc(sw, tw, t) * mask).mean() for t in temps)
  return kd_weak + kd_strong + cc_weak + bc_weak


@pytest.mark.parametrize("seed, standardize, exact", [
    (0, False, True), (1, False, True), (0, True, True), (0, False, False), (1, True, False)])
def test_mlkd_matches_reference(seed, standardize, exact):
  r = _rng(seed)
  sw, tw, ss, ts = (2 * r.standard_normal((6, 7)) for _ in range(4))
  out = losses.mlkd(sw, tw, ss, ts, standardize=standardize, exact_reference=exact)
  assert out.shape == ()
  np.testing.assert_allclose(out, ref_mlkd(sw, tw, ss, ts, logit_stand=standardize,
                                           reduce=exact), rtol=RTOL)


def test_mlkd_reference_masks_act_as_scalar_weights():
  # The reference multiplies already-averaged losses by the masks: the weak KD is scaled by the
  # fraction of low-confidence examples, not restricted to them. Pin it.
  r = _rng(5)
  sw, tw = 2 * r.standard_normal((6, 7)), 2 * r.standard_normal((6, 7))
  exact = losses.mlkd(sw, tw, sw, tw, temperatures=(4.0,))
  per_row = losses.mlkd(sw, tw, sw, tw, temperatures=(4.0,), exact_reference=False)
  assert abs(float(exact) - float(per_row)) > 1e-4


# Gradients ------------------------------------------------------------------------------------


def _grad_cases():
  r = _rng(7)
  f = lambda *s: r.standard_normal(s)  # noqa: E731
  s44, t44 = f(3, 4, 4, 5), f(3, 4, 4, 5)
  return {
      "correlation_congruence": (lambda a, b: losses.correlation_congruence(a, b), (f(5, 4),
                                                                                  f(5, 6))),
      "fsp": (lambda a, b: jnp.sum(losses.fsp([a, b], [b * 0.5 + 0.1, a])), (f(2, 4, 4, 3),
                                                                            f(2, 4, 4, 3))),
      "kdsvd": (lambda a: jnp.sum(losses.kdsvd([a, 0.5 * a[:, :2, :2]], [s44, t44[:, :2, :2]])),
                (f(3, 4, 4, 5),)),
      "factor_transfer": (lambda a, b: jnp.sum(losses.factor_transfer(a, b, p=2)), (s44, t44)),
      "activation_boundary": (lambda a: jnp.sum(losses.activation_boundary(a, t44)), (s44,)),
      "ofd": (lambda a: jnp.sum(losses.ofd(a, t44, -0.5 * np.ones(5))), (s44,)),
      "srd": (lambda a, b: losses.srd(a, b, a[:, :3], b[:, :3], exponent=2.0), (f(4, 6),
                                                                             f(4, 6))),
      "mlkd": (lambda a, b: losses.mlkd(a, b, b, a, temperatures=(2.0, 3.0, 4.0, 1.0),
                                        standardize=True), (f(6, 5), f(6, 5))),
  }


@pytest.mark.parametrize("name", sorted(_grad_cases()))
def test_gradients_by_finite_differences(name):
  fn, args = _grad_cases()[name]
  with jax.enable_x64(True):
    check_grads(jax.jit(fn), tuple(np.float64(a) for a in args), order=1, modes=["rev"],
                eps=1e-6, atol=1e-5, rtol=1e-4)

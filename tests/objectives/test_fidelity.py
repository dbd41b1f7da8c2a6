"""Term-level fidelity: SRD, AB, OFD and AT terms against formulas written out here in numpy.

The losses themselves are checked in tests/losses; these check what the terms add around them
(BatchNorm and exponent of SRD, when AB has a connector, OFD's pooling of the teacher's map,
AT's ``signed`` option), with the terms' own parameters read back and used in the formula.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import objectives
from kdjax.models import Outputs
from tests.losses.test_catalogue import np_adaptive_pool, ref_ab, ref_ofd

_rng = np.random.default_rng(11)


def _out(logits, **features):
  return Outputs(jnp.asarray(logits, jnp.float32),
                 {k: jnp.asarray(v, jnp.float32) for k, v in features.items()})


def _np_bn(x, eps):
  x = np.asarray(x, np.float64)
  return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_srd(fs, ft, zs, zt, exponent, temperature):
  feat = 2 * math.log(np.sum(np.abs(fs - ft) ** exponent))
  lp_s, lp_t = _np_log_softmax(zs / temperature), _np_log_softmax(zt / temperature)
  return feat + np.sum(np.exp(lp_t) * (lp_t - lp_s)) / len(zs)


def _np_conv_bn(x, kernel):
  y = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
  axes = tuple(range(y.ndim - 1))
  return (y - y.mean(axes)) / np.sqrt(y.var(axes) + 1e-5)  # BN at init: scale 1, bias 0


def test_srd_defaults_are_the_authors():
  b, ds, dt, c = 6, 5, 4, 7
  s_feat, t_feat = _rng.standard_normal((b, ds)), _rng.standard_normal((b, dt))
  zs, zt = _rng.standard_normal((b, c)), _rng.standard_normal((b, c))
  s_out, t_out = _out(zs, pre_logits=s_feat), _out(zt, pre_logits=t_feat)
  term = objectives.srd()
  params, state = term.init(jax.random.key(0), s_out, t_out, {})
  loss, _, _ = term.apply(params, state, s_out, t_out, {}, 0)
  proj = params["projector"]["out"]
  f_s = s_feat @ np.asarray(proj["kernel"], np.float64) + np.asarray(proj["bias"], np.float64)
  # BatchNorm (no affine, eps 1e-4) on both sides, exponent 4, the student's own logits, T = 1.
  expected = _np_srd(_np_bn(f_s, 1e-4), _np_bn(t_feat, 1e-4), zs, zt, 4.0, 1.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_srd_options_match_torchdistill_on_raw_features_and_the_teacher_head():
  b, ds, dt, c = 6, 5, 4, 3
  s_feat, t_feat = _rng.standard_normal((b, ds)), _rng.standard_normal((b, dt))
  zs, zt = _rng.standard_normal((b, c)), _rng.standard_normal((b, c))
  w_head = _rng.standard_normal((dt, c))
  s_out, t_out = _out(zs, pre_logits=s_feat), _out(zt, pre_logits=t_feat)
  term = objectives.srd(normalize=False, exponent=1.0, temperature=2.0, head="teacher",
                        teacher_head=lambda f: f @ jnp.asarray(w_head, jnp.float32))
  params, state = term.init(jax.random.key(1), s_out, t_out, {})
  loss, _, _ = term.apply(params, state, s_out, t_out, {}, 0)
  proj = params["projector"]["out"]
  f_s = s_feat @ np.asarray(proj["kernel"], np.float64) + np.asarray(proj["bias"], np.float64)
  expected = _np_srd(f_s, t_feat, f_s @ w_head, zt, 1.0, 2.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  with pytest.raises(ValueError, match="head must be 'student'"):
    objectives.srd(head="both")


def test_activation_boundary_connects_only_pairs_whose_shapes_differ():
  s_same, t_same = 1.5 * _rng.standard_normal((4, 3, 3, 5)), _rng.standard_normal((4, 3, 3, 5))
  s_wide, t_wide = _rng.standard_normal((4, 2, 2, 3)), _rng.standard_normal((4, 2, 2, 6))
  s_out = _out(np.zeros((4, 2)), a=s_same, b=s_wide)
  t_out = _out(np.zeros((4, 2)), a=t_same, b=t_wide)
  term = objectives.activation_boundary(student=("a", "b"), teacher=("a", "b"), margin=0.7)
  params, state = term.init(jax.random.key(0), s_out, t_out, {})
  assert sorted(params) == ["connector_1"]  # pair 0 has one shape: no connector
  loss, _, _ = term.apply(params, state, s_out, t_out, {}, 0)
  connected = _np_conv_bn(s_wide, params["connector_1"]["conv"]["kernel"])
  # RepDistiller's weights 2^(i - n + 1) and scale 3e-3; ref_ab is the batch mean.
  expected = 3e-3 * (0.5 * ref_ab(s_same, t_same, 0.7) + 1.0 * ref_ab(connected, t_wide, 0.7))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  bad = _out(np.zeros((4, 2)), a=s_same[:, :2, :2], b=s_wide)
  with pytest.raises(ValueError, match="same spatial size"):
    term.init(jax.random.key(0), bad, t_out, {})


def test_ofd_pools_the_teachers_map_to_the_students_resolution():
  s_map, t_map = _rng.standard_normal((3, 2, 2, 4)), _rng.standard_normal((3, 4, 4, 5))
  margin = -np.abs(_rng.standard_normal(5))
  s_out, t_out = _out(np.zeros((3, 2)), f=s_map), _out(np.zeros((3, 2)), f=t_map)
  term = objectives.ofd(student="f", teacher="f", margins=(margin,))
  params, state = term.init(jax.random.key(0), s_out, t_out, {})
  loss, _, _ = term.apply(params, state, s_out, t_out, {}, 0)
  connected = _np_conv_bn(s_map, params["connector_0"]["conv"]["kernel"])
  expected = ref_ofd(connected, np_adaptive_pool(t_map, (2, 2)), margin)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  with pytest.raises(ValueError, match="at least as large"):
    term.init(jax.random.key(0), t_out, s_out, {})


@pytest.mark.parametrize("signed", [False, True])
def test_attention_transfer_term_exposes_signed(signed):
  s_map, t_map = _rng.standard_normal((3, 4, 4, 2)), _rng.standard_normal((3, 4, 4, 5))
  s_out, t_out = _out(np.zeros((3, 2)), f=s_map), _out(np.zeros((3, 2)), f=t_map)
  term = objectives.attention_transfer(student="f", teacher="f", p=3, signed=signed)
  loss, _, _ = term.apply({}, {}, s_out, t_out, {}, 0)

  def att(f):
    v = np.mean((f if signed else np.abs(f)) ** 3, axis=-1).reshape(len(f), -1)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

  expected = np.mean(np.mean((att(s_map) - att(t_map)) ** 2, axis=1))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)

"""Objective terms: weighting, schedules, adapters, metrics and the errors users see."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import objectives
from kdjax.models import Outputs


def _outs(seed=0, b=4, c=5, d=3):
  rng = np.random.default_rng(seed)
  s = Outputs(jnp.asarray(rng.standard_normal((b, c)), jnp.float32),
              {"feat": jnp.asarray(rng.standard_normal((b, d)), jnp.float32)})
  t = Outputs(jnp.asarray(rng.standard_normal((b, c)), jnp.float32),
              {"feat": jnp.asarray(rng.standard_normal((b, 2 * d)), jnp.float32)})
  labels = jnp.asarray(rng.integers(0, c, b), jnp.int32)
  return s, t, {"label": labels}


def _np_kd(s, t, T):
  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  ps, pt = softmax(np.asarray(s, np.float64) / T), softmax(np.asarray(t, np.float64) / T)
  return (T**2 * np.sum(pt * (np.log(pt) - np.log(ps)), -1)).mean()


def _np_ce(s, labels):
  s = np.asarray(s, np.float64)
  logz = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
  return (logz - s[np.arange(len(labels)), np.asarray(labels)]).mean()


def test_combine_is_the_weighted_sum_of_its_terms():
  s, t, batch = _outs()
  obj = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                            "kd": (objectives.kd(temperature=4.0), 0.9)})
  params, state = obj.init(jax.random.key(0), s, t, batch)
  loss, _, metrics = obj.apply(params, state, s, t, batch, jnp.int32(0))
  ce, kd = _np_ce(s.logits, batch["label"]), _np_kd(s.logits, t.logits, 4.0)
  np.testing.assert_allclose(metrics["ce"], ce, rtol=2e-5)
  np.testing.assert_allclose(metrics["kd"], kd, rtol=2e-5)
  np.testing.assert_allclose(loss, 0.1 * ce + 0.9 * kd, rtol=2e-5)
  np.testing.assert_allclose(metrics["loss"], loss)


def test_schedule_weight_follows_the_step():
  s, t, batch = _outs()
  warmup = optax.linear_schedule(0.0, 1.0, 10)
  obj = objectives.combine({"kd": (objectives.kd(temperature=2.0), warmup)})
  params, state = obj.init(jax.random.key(0), s, t, batch)
  kd = _np_kd(s.logits, t.logits, 2.0)
  for step, w in [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)]:
    loss, _, metrics = jax.jit(obj.apply)(params, state, s, t, batch, jnp.int32(step))
    np.testing.assert_allclose(metrics["kd/weight"], w, atol=1e-6)
    np.testing.assert_allclose(loss, w * kd, rtol=2e-5, atol=1e-7)


def test_masked_reduction_ignores_padding():
  s, t, batch = _outs(b=4)
  mask = jnp.asarray([True, True, False, False])
  obj = objectives.combine({"kd": objectives.kd(temperature=1.0)})
  loss, _, _ = obj.apply({"kd": {}}, {"kd": {}}, s, t, {**batch, "mask": mask}, jnp.int32(0))
  np.testing.assert_allclose(loss, _np_kd(s.logits[:2], t.logits[:2], 1.0), rtol=2e-5)


def test_adapter_projects_student_onto_teacher_width():
  s, t, batch = _outs(d=3)
  term = objectives.fitnets(student="feat", teacher="feat")
  params, _ = term.init(jax.random.key(0), s, t, batch)
  w = params["adapter_0"]["out"]["kernel"]
  assert w.shape == (3, 6)
  loss, _, _ = term.apply(params, {}, s, t, batch, jnp.int32(0))
  proj = np.asarray(s.features["feat"]) @ np.asarray(w) + np.asarray(params["adapter_0"]["out"]["bias"])
  expected = np.mean((proj - np.asarray(t.features["feat"]))**2)
  np.testing.assert_allclose(loss, expected, rtol=2e-5)
  grads = jax.grad(lambda p: term.apply(p, {}, s, t, batch, jnp.int32(0))[0])(params)
  assert float(jnp.abs(grads["adapter_0"]["out"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_negative_weight_is_refused(bad):
  with pytest.raises(ValueError, match="must be >= 0"):
    objectives.combine({"kd": (objectives.kd(), bad)})


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_is_refused(temperature):
  with pytest.raises(ValueError, match="temperature must be > 0"):
    objectives.kd(temperature=temperature)


def test_missing_tap_names_the_fix():
  s, t, batch = _outs()
  term = objectives.attention_transfer(student="stage3", teacher="stage3")
  with pytest.raises(ValueError, match="add 'stage3' to the student model's taps"):
    term.apply({}, {}, s, t, batch, jnp.int32(0))


def test_teacher_term_without_teacher_names_the_fix():
  s, _, batch = _outs()
  with pytest.raises(ValueError, match="there is no teacher"):
    objectives.kd().apply({}, {}, s, None, batch, jnp.int32(0))


def test_not_a_term_is_refused():
  with pytest.raises(TypeError, match="not a Term"):
    objectives.combine({"kd": "kd"})

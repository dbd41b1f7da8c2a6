"""Quantization with qwix: QAT through distill_step, the int8 formula, PTQ, errors."""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import compress, models, objectives
from tests import helpers

pytest.importorskip("qwix")


class OneDense(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3, name="head")(x)


def test_qat_dense_stays_within_one_int8_step():
  """Per-channel absmax int8 (scale s = max|w| / 127.5 per output column, per example for the
  activations): every quantized value is within one step s of the float one, so the layer's
  error is bounded by |x| @ s_w (+ s_x * sum|w| with int8 activations), and not zero."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (5, 7)))
  module = OneDense()
  variables = module.init(jax.random.key(1), x)
  kernel = np.asarray(variables["params"]["head"]["kernel"])
  s_w = np.max(np.abs(kernel), axis=0, keepdims=True) / 127.5  # [1, 3]
  s_x = np.max(np.abs(x), axis=1, keepdims=True) / 127.5  # [5, 1]
  exact = x @ kernel
  weights_only = compress.qat(models.from_linen(module, variables), act_bits=None,
                              example_input=x)
  out = np.asarray(weights_only.apply(weights_only.params, {}, x, train=False)[0].logits)
  bound_w = np.abs(x) @ np.broadcast_to(s_w, kernel.shape)
  assert np.all(np.abs(out - exact) <= bound_w + 1e-6) and np.any(out != exact)
  both = compress.qat(models.from_linen(module, variables), example_input=x)
  out8 = np.asarray(both.apply(both.params, {}, x, train=False)[0].logits)
  bound = bound_w + s_x * np.sum(np.abs(kernel) + s_w, axis=0, keepdims=True)
  assert np.all(np.abs(out8 - exact) <= bound + 1e-6) and np.any(out8 != out)


def test_qat_student_distills_with_every_step_unchanged():
  teacher = helpers.tap_mlp(1, hidden=32)
  float_student = helpers.tap_mlp(2, hidden=16)
  # Batch 12: qwix tells weights from activations by shape under jax.grad, so an activation
  # shaped like a kernel ([16, 16] here) would be mistaken for one (see docs/deploy.md).
  x = jax.random.normal(jax.random.key(3), (12, 6))
  batch = {"image": x, "label": jnp.arange(12, dtype=jnp.int32) % 5}
  student = compress.qat(float_student, example_input=x)
  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.5),
                                  "kd": (objectives.kd(temperature=2.0), 0.5)})
  state, losses = helpers.distill(student, teacher, objective, batch, tx=optax.adam(1e-2),
                                  steps=8, seed=4)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert jax.tree.structure(state.params["student"]) == jax.tree.structure(float_student.params)
  # The trained weights, run fake-quantized vs in float: different, but close.
  p, s = state.params["student"], state.student_state
  q_logits = student.apply(p, s, x, train=False, rng=None)[0].logits
  f_logits = float_student.apply(p, s, x, train=False, rng=None)[0].logits
  diff = float(jnp.max(jnp.abs(q_logits - f_logits)))
  assert 0.0 < diff < 0.05 * float(jnp.max(jnp.abs(f_logits)))


def test_keep_float_and_int4():
  model = helpers.tap_mlp(0)
  x = jax.random.normal(jax.random.key(1), (4, 6))
  float_logits = model.apply(model.params, {}, x, train=False, rng=None)[0].logits
  kept = compress.qat(model, keep_float=(".*",), example_input=None)
  np.testing.assert_array_equal(kept.apply(model.params, {}, x, train=False, rng=None)[0].logits,
                                float_logits)
  with pytest.raises(ValueError, match="keep_float"):
    compress.qat(model, keep_float=(".*",), example_input=x)
  int8 = compress.qat(model, example_input=x).apply(model.params, {}, x, train=False, rng=None)
  int4 = compress.qat(model, weight_bits=4, act_bits=None, example_input=x).apply(
      model.params, {}, x, train=False, rng=None)
  err8 = float(jnp.max(jnp.abs(int8[0].logits - float_logits)))
  err4 = float(jnp.max(jnp.abs(int4[0].logits - float_logits)))
  assert 0.0 < err8 < err4
  with pytest.raises(ValueError, match="weight_bits"):
    compress.quantization_rules(weight_bits=3)


@pytest.mark.slow  # a conv model through qwix's PTQ init and QAT (about 20 s of CPU)
def test_ptq_stores_int8_and_matches_qat():
  module = models.get_model("cnn_small", num_classes=4, width=4)
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
  variables = module.init(jax.random.key(1), x, train=False)
  model = models.from_linen(module, variables)
  ptq_model = compress.ptq(model, module, example_input=x)
  dtypes = {str(a.dtype) for a in jax.tree.leaves(ptq_model.params)}
  assert "int8" in dtypes
  ptq_logits = ptq_model.apply(ptq_model.params, ptq_model.model_state, x, train=False,
                               rng=None)[0].logits
  qat_model = compress.qat(model, example_input=x)
  qat_logits = qat_model.apply(model.params, model.model_state, x, train=False, rng=None)[0].logits
  float_logits = model.apply(model.params, model.model_state, x, train=False, rng=None)[0].logits
  np.testing.assert_allclose(ptq_logits, qat_logits, atol=1e-4)
  assert float(jnp.max(jnp.abs(ptq_logits - float_logits))) > 0
  with pytest.raises(TypeError, match="get_model"):
    compress.ptq(model, model, example_input=x)


def test_non_linen_model_is_refused():
  model = models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))})
  with pytest.raises(ValueError, match="from_linen"):
    compress.qat(model, example_input=jnp.ones((2, 3)))


def test_missing_deploy_extra_names_the_fix(monkeypatch):
  real_import = importlib.import_module

  def fake_import(name, *args, **kwargs):
    if name == "qwix":
      raise ImportError("No module named 'qwix'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(importlib, "import_module", fake_import)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[deploy\]"'):
    compress.qat(helpers.tap_mlp(0))

"""from_apply_fn, and building zoo models by name."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models

X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)


def test_apply_fn_returning_logits():
  model = models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.asarray(W)}, name="linear")
  out, state = model.apply(model.params, model.model_state, X, train=True, rng=jax.random.key(0))
  np.testing.assert_allclose(out.logits, X @ W, rtol=1e-6)
  assert out.features == {} and state == {} and model.name == "linear"


def test_apply_fn_returning_logits_and_features_under_jit_and_grad():
  def apply_fn(p, x):
    h = x @ p["w"]
    return jnp.tanh(h), {"hidden": h}

  model = models.from_apply_fn(apply_fn, {"w": jnp.asarray(W)}, model_state={"count": 1})
  fwd = jax.jit(lambda p, s, x: model.apply(p, s, x, train=False, rng=None))
  out, state = fwd(model.params, model.model_state, X)
  np.testing.assert_allclose(out.features["hidden"], X @ W, rtol=1e-5)
  np.testing.assert_allclose(out.logits, np.tanh(X @ W), rtol=1e-5)
  assert state == {"count": 1}
  grad = jax.grad(lambda p: model.apply(p, {}, X, train=True, rng=None)[0].features["hidden"]
                  .sum())(model.params)
  np.testing.assert_allclose(grad["w"], np.repeat(X.sum(0)[:, None], 2, axis=1), rtol=1e-5)


def test_apply_fn_returning_outputs_passes_through():
  out, _ = models.from_apply_fn(lambda p, x: models.Outputs(x, {"x": x}), {}).apply(
      {}, {}, X, train=False, rng=None)
  assert set(out.features) == {"x"}


def test_apply_fn_with_a_malformed_tuple_is_rejected():
  model = models.from_apply_fn(lambda p, x: (x, x, x), {})
  with pytest.raises(TypeError, match=r"\(logits, features\)"):
    model.apply({}, {}, X, train=False, rng=None)


def test_available_models_and_unknown_names():
  names = models.available_models()
  assert names == sorted(names)
  for name in ("resnet8", "resnet32x4", "resnet50", "wrn_40_2", "vgg13", "mobilenetv2",
               "shufflenetv1", "shufflenetv2", "vit_tiny", "transformer_lm", "mlp", "cnn_small"):
    assert name in names
  with pytest.raises(ValueError, match=r"unknown model 'resnet9'; available: .*resnet8, "):
    models.get_model("resnet9", num_classes=10)
  with pytest.raises(ValueError, match="unknown model"):
    models.create("resnet9", num_classes=10, input_shape=(32, 32, 3), rng=jax.random.key(0))


def test_get_model_passes_keyword_arguments():
  module = models.get_model("mlp", num_classes=4, hidden=(7, 5))
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                             jax.ShapeDtypeStruct((1, 6), jnp.float32))
  assert models.param_count(variables["params"]) == 6 * 7 + 7 + 7 * 5 + 5 + 5 * 4 + 4
  with pytest.raises(TypeError):
    models.get_model("mlp", num_classes=4, widths=(7,))


def test_param_count_counts_scalars_of_arrays_and_shapes():
  params = {"a": jnp.zeros((2, 3)), "b": [jax.ShapeDtypeStruct((4,), jnp.float32)]}
  assert models.param_count(params) == 10
  assert models.param_count({}) == 0


def test_create_checks_taps_when_building():
  with pytest.raises(ValueError, match="no tap 'stage9'; available taps: .*stage1"):
    models.create("mlp", num_classes=3, input_shape=(4,), rng=jax.random.key(0),
                  taps=("stage9",), hidden=(8,))

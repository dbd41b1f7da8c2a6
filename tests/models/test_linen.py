"""from_linen: variables split, BatchNorm state, taps, rngs, jit and grad."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models


class Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(8, name="dense")(x))


class Net(nn.Module):
  """Dense -> BatchNorm -> Dropout -> Block -> head; sows pre_logits."""

  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8, name="stage1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Block(name="stage2")(x)
    self.sow("intermediates", "pre_logits", x)
    return nn.Dense(3, name="head")(x)


X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def net():
  module = Net()
  return module, module.init(jax.random.key(0), X)


def test_params_and_model_state_split(net):
  module, variables = net
  model = models.from_linen(module, {**variables, "intermediates": {"junk": (X,)}}, name="n")
  assert model.params is variables["params"]
  assert set(model.model_state) == {"batch_stats"}  # intermediates dropped
  assert model.name == "n" and model.taps == ()
  assert models.from_linen(Block(), Block().init(jax.random.key(0), X)).model_state == {}


def test_eval_matches_module_apply_and_keeps_state(net):
  module, variables = net
  model = models.from_linen(module, variables)
  out, state = model.apply(model.params, model.model_state, X, train=False, rng=None)
  np.testing.assert_array_equal(out.logits, module.apply(variables, X, train=False))
  assert out.features == {}
  assert state is model.model_state


def test_train_updates_batch_stats_like_module_apply(net):
  module, variables = net
  model = models.from_linen(module, variables, taps=("pre_logits",))
  rng = jax.random.key(3)
  out, state = model.apply(model.params, model.model_state, X, train=True, rng=rng)
  want, updates = module.apply(variables, X, train=True, rngs={"dropout": rng},
                               mutable=["batch_stats"])
  np.testing.assert_allclose(out.logits, want, rtol=1e-6)
  chex.assert_trees_all_close(state, updates)
  assert set(state) == {"batch_stats"}  # the captured intermediates stay out of the state
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, model.model_state)
  assert all(jax.tree.leaves(moved))


def test_taps_module_paths_and_sown_values(net):
  module, variables = net
  taps = ("stage1", "stage2/dense", "stage2", "pre_logits")
  model = models.from_linen(module, variables, taps=taps, example_input=X)
  out, _ = model.apply(model.params, model.model_state, X, train=False, rng=None)
  assert tuple(out.features) == taps
  p = variables["params"]
  stage1 = X @ np.asarray(p["stage1"]["kernel"]) + np.asarray(p["stage1"]["bias"])
  np.testing.assert_allclose(out.features["stage1"], stage1, rtol=1e-5, atol=1e-6)
  dense = out.features["stage2/dense"]
  assert dense.shape == (4, 8)
  np.testing.assert_allclose(out.features["stage2"], np.maximum(dense, 0), rtol=1e-6)
  np.testing.assert_array_equal(out.features["pre_logits"], out.features["stage2"])


def test_unknown_tap_raises_at_construction_with_the_available_paths(net):
  module, variables = net
  with pytest.raises(ValueError, match="no tap 'stage9'") as e:
    models.from_linen(module, variables, taps=("stage1", "stage9"), example_input=X)
  for path in ("stage1", "stage2", "stage2/dense", "bn", "head", "pre_logits"):
    assert path in str(e.value)


def test_unknown_tap_without_example_input_raises_at_the_first_call_even_under_jit(net):
  module, variables = net
  model = models.from_linen(module, variables, taps=("stage9",))
  with pytest.raises(ValueError, match="no tap 'stage9'.*stage2/dense"):
    jax.jit(lambda p, s, x: model.apply(p, s, x, train=False, rng=None))(
        model.params, model.model_state, X)


@pytest.mark.parametrize("taps", ["stage1", ("stage1", "stage1"), ("",), ("stage1/",)])
def test_malformed_taps_are_rejected(net, taps):
  module, variables = net
  with pytest.raises((TypeError, ValueError)):
    models.from_linen(module, variables, taps=taps)


def test_dropout_follows_rng_in_train_mode_only(net):
  module, variables = net
  model = models.from_linen(module, variables)

  def logits(train, rng):
    return model.apply(model.params, model.model_state, X, train=train, rng=rng)[0].logits

  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(logits(True, k1), logits(True, k1))
  assert not np.allclose(logits(True, k1), logits(True, k2))
  np.testing.assert_array_equal(logits(False, k1), logits(False, k2))
  np.testing.assert_array_equal(logits(False, k1), logits(False, None))


def test_jit_equals_eager_and_grad_flows_through_logits_and_taps(net):
  module, variables = net
  model = models.from_linen(module, variables, taps=("stage1", "pre_logits"))
  rng = jax.random.key(0)

  def loss(params, state):
    out, new_state = model.apply(params, state, X, train=True, rng=rng)
    return jnp.sum(out.logits**2) + jnp.sum(out.features["stage1"]), (out, new_state)

  (eager_loss, (eager_out, eager_state)), eager_grads = jax.value_and_grad(loss, has_aux=True)(
      model.params, model.model_state)
  (jit_loss, (jit_out, jit_state)), jit_grads = jax.jit(
      jax.value_and_grad(loss, has_aux=True))(model.params, model.model_state)
  chex.assert_trees_all_close((jit_loss, jit_out, jit_state, jit_grads),
                              (eager_loss, eager_out, eager_state, eager_grads), rtol=1e-5,
                              atol=1e-6)
  assert jax.tree.structure(eager_grads) == jax.tree.structure(model.params)
  # The tap's own term reaches stage1's bias: d(sum stage1)/d(bias) contributes the batch size.
  assert float(jnp.abs(eager_grads["stage1"]["bias"]).min()) > 0


class NoTrainArg(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="head")(x)


class DeterministicArg(nn.Module):

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    return nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(2, name="head")(x))


def test_modules_without_a_train_argument():
  module = NoTrainArg()
  model = models.from_linen(module, module.init(jax.random.key(0), X), taps=("head",))
  for train in (True, False):
    out, state = model.apply(model.params, model.model_state, X, train=train, rng=None)
    assert out.logits.shape == (4, 2) and state == {}
    np.testing.assert_array_equal(out.features["head"], out.logits)


def test_deterministic_argument_receives_not_train():
  module = DeterministicArg()
  variables = module.init(jax.random.key(0), X, deterministic=True)
  model = models.from_linen(module, variables)
  eval_out, _ = model.apply(model.params, {}, X, train=False, rng=None)
  np.testing.assert_array_equal(eval_out.logits, module.apply(variables, X, deterministic=True))
  train_out, _ = model.apply(model.params, {}, X, train=True, rng=jax.random.key(0))
  assert np.any(np.asarray(train_out.logits) == 0)  # dropout ran


def test_method_argument(net):
  class TwoHeads(nn.Module):

    def setup(self):
      self.body = nn.Dense(4)
      self.aux = nn.Dense(6)

    def __call__(self, x):
      return self.body(x)

    def auxiliary(self, x):
      return self.aux(x)

  module = TwoHeads()
  variables = module.init(jax.random.key(0), X)
  variables = {"params": {**variables["params"],
                          **module.init(jax.random.key(0), X, method="auxiliary")["params"]}}
  model = models.from_linen(module, variables, method="auxiliary")
  out, _ = model.apply(model.params, {}, X, train=False, rng=None)
  assert out.logits.shape == (4, 6)


def test_rejects_what_is_not_a_linen_module_with_variables(net):
  module, variables = net
  with pytest.raises(TypeError, match="from_nnx"):
    models.from_linen(lambda x: x, variables)
  with pytest.raises(ValueError, match="'params'"):
    models.from_linen(module, variables["params"])

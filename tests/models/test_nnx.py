"""from_nnx: a pure apply over an NNX module: state, train/eval, dropout rngs, taps, jit, grad."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax import models


class Net(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout -> two Linear blocks (an nnx.List) -> head."""

  def __init__(self, rngs: nnx.Rngs, dropout: float = 0.5):
    self.stage1 = nnx.Linear(5, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = self.drop(nnx.relu(self.bn(self.stage1(x))))
    for block in self.blocks:
      x = nnx.relu(block(x))
    self.sow(nnx.Intermediate, "pre_logits", x)
    return self.head(x)


X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def net():
  return Net(nnx.Rngs(0))


def _logits(model, train, rng, params=None, state=None):
  params = model.params if params is None else params
  state = model.model_state if state is None else state
  return model.apply(params, state, X, train=train, rng=rng)[0].logits


def test_params_and_state_are_plain_dicts_and_rng_streams_are_not_state(net):
  model = models.from_nnx(net, name="net")
  assert set(model.params) == {"stage1", "bn", "blocks", "head"}
  assert set(model.params["blocks"]) == {"0", "1"}
  assert set(model.params["bn"]) == {"scale", "bias"}
  assert model.model_state == {"bn": {"mean": model.model_state["bn"]["mean"],
                                      "var": model.model_state["bn"]["var"]}}
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model.params))
  np.testing.assert_array_equal(model.params["head"]["kernel"], net.head.kernel[...])


def test_values_sown_before_wrapping_stay_out_of_the_state():
  used = Net(nnx.Rngs(0))
  used(X)  # an eager call outside nnx.capture leaves an Intermediate on the module
  assert len(nnx.to_flat_state(nnx.state(used, nnx.Intermediate))) == 1
  model = models.from_nnx(used)
  assert set(model.model_state) == {"bn"}
  _, state = model.apply(model.params, model.model_state, X, train=True, rng=jax.random.key(0))
  assert set(state) == {"bn"}


def test_eval_matches_the_module_and_keeps_state(net):
  model = models.from_nnx(net)
  out, state = model.apply(model.params, model.model_state, X, train=False, rng=None)
  reference = nnx.clone(net)
  reference.eval()
  np.testing.assert_allclose(out.logits, reference(X), rtol=1e-6)
  assert state is model.model_state


def test_train_updates_batch_stats_and_leaves_the_wrapped_module_alone(net):
  before = nnx.clone(net)
  model = models.from_nnx(net)
  _, state = model.apply(model.params, model.model_state, X, train=True, rng=jax.random.key(0))
  assert jax.tree.structure(state) == jax.tree.structure(model.model_state)
  # The running mean moves toward the batch mean of stage1's output (momentum 0.9).
  h = X @ np.asarray(model.params["stage1"]["kernel"]) + np.asarray(model.params["stage1"]["bias"])
  np.testing.assert_allclose(state["bn"]["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["bn"]["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5)
  chex.assert_trees_all_equal(nnx.state(net), nnx.state(before))


def test_dropout_follows_rng_in_train_mode_and_is_off_in_eval(net):
  model = models.from_nnx(net)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(_logits(model, True, k1), _logits(model, True, k1))
  assert not np.allclose(_logits(model, True, k1), _logits(model, True, k2))
  np.testing.assert_array_equal(_logits(model, False, k1), _logits(model, False, k2))
  np.testing.assert_array_equal(_logits(model, False, None), _logits(model, False, k1))
  # Without dropout, train mode differs from eval only by batch statistics.
  no_drop = models.from_nnx(Net(nnx.Rngs(0), dropout=0.0))
  np.testing.assert_array_equal(_logits(no_drop, True, k1), _logits(no_drop, True, k2))


def test_taps_module_paths_list_items_and_sown_values(net):
  taps = ("stage1", "blocks/1", "pre_logits")
  model = models.from_nnx(net, taps=taps, example_input=X)
  out, _ = model.apply(model.params, model.model_state, X, train=False, rng=None)
  assert tuple(out.features) == taps
  p = model.params["stage1"]
  np.testing.assert_allclose(out.features["stage1"],
                             X @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), rtol=1e-5,
                             atol=1e-6)
  assert out.features["blocks/1"].shape == (4, 8)
  np.testing.assert_allclose(out.features["pre_logits"], np.maximum(out.features["blocks/1"], 0))


def test_unknown_tap_raises_with_the_available_paths(net):
  with pytest.raises(ValueError, match="no tap 'stage9'") as e:
    models.from_nnx(net, taps=("stage9",), example_input=X)
  for path in ("stage1", "bn", "blocks/0", "blocks/1", "head", "pre_logits"):
    assert path in str(e.value)
  lazy = models.from_nnx(net, taps=("stage9",))
  with pytest.raises(ValueError, match="no tap 'stage9'.*blocks/1"):
    _logits(lazy, False, None)


def test_jit_and_grad_equal_eager(net):
  model = models.from_nnx(net, taps=("stage1",))
  rng = jax.random.key(0)

  def loss(params, state):
    out, new_state = model.apply(params, state, X, train=True, rng=rng)
    return jnp.sum(out.logits**2) + jnp.sum(out.features["stage1"]), new_state

  eager = jax.value_and_grad(loss, has_aux=True)(model.params, model.model_state)
  jitted = jax.jit(jax.value_and_grad(chex.assert_max_traces(loss, n=1), has_aux=True))
  first = jitted(model.params, model.model_state)
  second = jitted(model.params, first[0][1])  # new state, same structure: no retrace
  chex.assert_trees_all_close(first, eager, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(second) == jax.tree.structure(first)
  grads = eager[1]
  assert jax.tree.structure(grads) == jax.tree.structure(model.params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


class TrainArg(nnx.Module):

  def __init__(self, rngs):
    self.head = nnx.Linear(5, 2, rngs=rngs)

  def __call__(self, x, train: bool = False):
    return self.head(x) + (1.0 if train else 0.0)


def test_call_train_argument_receives_train():
  model = models.from_nnx(TrainArg(nnx.Rngs(0)))
  np.testing.assert_allclose(_logits(model, True, None) - _logits(model, False, None), 1.0)


def test_params_that_do_not_fit_the_module_are_named(net):
  model = models.from_nnx(net)
  params = {**model.params, "extra": {"w": jnp.zeros(1)}}
  with pytest.raises(ValueError, match="unexpected.*extra/w"):
    _logits(model, False, None, params=params)


def test_rejects_linen_modules():
  with pytest.raises(TypeError, match="from_linen"):
    models.from_nnx(object())

"""``remat=True`` on the zoo's Transformers: the same values, taps and gradients, less memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models

LM = {"transformer_lm": dict(d_model=32, n_layers=3, n_heads=4, max_len=16, dropout_rate=0.0),
      "decoder": dict(hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                      intermediate_size=64)}
TAPS = {"transformer_lm": ("blocks_1", "blocks_2/attn_probs", "pre_logits"),
        "decoder": ("blocks_1", "pre_logits")}


def _model(name, remat, **kwargs):
  return models.create(name, num_classes=50, input_shape=(16,), rng=jax.random.key(0),
                       taps=TAPS[name], remat=remat, **{**LM[name], **kwargs})


def _loss_and_grads(model, tokens):
  def loss(params):
    out, _ = model.apply(params, model.model_state, tokens, train=True, rng=jax.random.key(1))
    feats = sum(jnp.mean(jnp.square(f.astype(jnp.float32))) for f in out.features.values())
    return jnp.mean(jax.nn.log_softmax(out.logits)[..., 0]) + feats, out
  return jax.value_and_grad(loss, has_aux=True)(model.params)


@pytest.mark.parametrize("name", sorted(LM))
def test_remat_keeps_parameters_values_taps_and_gradients(name):
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 16)), jnp.int32)
  plain, remat = _model(name, False), _model(name, True)
  assert jax.tree.structure(plain.params) == jax.tree.structure(remat.params)
  jax.tree.map(np.testing.assert_array_equal, plain.params, remat.params)  # same initialisation
  (l0, out0), g0 = jax.jit(lambda t: _loss_and_grads(plain, t))(tokens)
  (l1, out1), g1 = jax.jit(lambda t: _loss_and_grads(remat, t))(tokens)
  assert set(out0.features) == set(out1.features) == set(TAPS[name])
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  np.testing.assert_allclose(out1.logits, out0.logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0)) > 0


@pytest.mark.parametrize("name", sorted(LM))
def test_remat_lowers_the_compiled_gradients_temporary_memory(name):
  """Compiled for a compile-only H100 (the CUDA compiler schedules the recomputation in the
  backward pass; XLA:CPU keeps the forward activations either way): shapes only, never run."""
  plan = pytest.importorskip("kdjax.plan")
  try:
    device = plan.get_topology("h100:1x2").devices[0]
  except plan.TopologyError as e:  # the plan extra is not installed
    pytest.skip(str(e))
  at = jax.sharding.SingleDeviceSharding(device)
  kwargs = ({"d_model": 128, "n_layers": 6, "max_len": 128} if name == "transformer_lm" else
            {"hidden_size": 128, "num_layers": 6, "intermediate_size": 512})
  tokens = jax.ShapeDtypeStruct((16, 128), jnp.int32, sharding=at)
  temp = {}
  for remat in (False, True):
    model = models.create(name, num_classes=50, input_shape=(128,), rng=jax.random.key(0),
                          remat=remat, **{**LM[name], **kwargs})
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=at),
                          model.params)

    def loss(p, t, model=model):
      out, _ = model.apply(p, model.model_state, t, train=True, rng=jax.random.key(1))
      return jnp.mean(jax.nn.log_softmax(out.logits)[..., 0])

    compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert 0 < temp[True] < 0.5 * temp[False], temp

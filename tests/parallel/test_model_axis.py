"""The ``model`` mesh axis: Megatron-style splits by path, same trajectory as one device."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import kdjax
from kdjax import lm, models, objectives, parallel
from kdjax.models.zoo import DecoderConfig

V, L, B = 64, 8, 8


def _decoder(seed, width, layers):
  config = DecoderConfig(vocab_size=V, hidden_size=width, intermediate_size=2 * width,
                         num_layers=layers, num_heads=4, num_kv_heads=4, head_dim=8,
                         qkv_bias=True)
  return models.decoder_model(config, rng=jax.random.key(seed))


def _batch(seed):
  rng = np.random.default_rng(seed)
  stream = rng.integers(0, V, (B, L + 1)).astype(np.int32)
  return {"tokens": stream[:, :-1], "targets": stream[:, 1:], "mask": np.ones((B, L), bool)}


@pytest.fixture(scope="module")
def state():
  objective = objectives.combine({"ce": (lm.token_cross_entropy_term(), 0.5),
                                  "kd": (lm.token_kd_term(temperature=2.0), 0.5)})
  return kdjax.DistillState.create(student=_decoder(1, 16, 1), teacher=_decoder(0, 32, 2),
                                   objective=objective, tx=optax.adam(1e-2),
                                   rng=jax.random.key(0), example_batch=_batch(0),
                                   input_key="tokens", label_key="targets")


def _trajectory(runner, state, steps=3):
  placed = runner.put_state(state)
  losses = []
  for i in range(steps):
    placed, metrics = runner.step(placed, _batch(i))
    losses.append(float(metrics["loss"]))
  return np.asarray(losses), placed


def test_model_axis_gives_the_one_device_trajectory(state):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  one = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:1]))
  reference, _ = _trajectory(one, state)
  for model_size in (2, 4):
    runner = parallel.make_runner("jit", mesh_shape={"data": -1, "model": model_size})
    assert dict(runner.mesh.shape) == {"data": 8 // model_size, "model": model_size}
    got, placed = _trajectory(runner, state)
    np.testing.assert_allclose(got, reference, rtol=1e-4)
    # The splits really happen: heads, MLP hidden and vocabulary over `model`, for both models.
    student = placed.params["student"]["blocks_0"]
    assert student["q_proj"]["kernel"].sharding.spec == P(None, "model")
    assert student["q_proj"]["bias"].sharding.spec == P("model")
    assert student["o_proj"]["kernel"].sharding.spec == P("model", None)
    assert student["down_proj"]["kernel"].sharding.spec == P("model", None)
    assert placed.teacher_params["embed"]["embedding"].sharding.spec == P("model", None)
    assert placed.teacher_params["lm_head"].sharding.spec == P(None, "model")
    assert placed.teacher_params["final_norm"]["scale"].sharding.is_fully_replicated
    shard = student["up_proj"]["kernel"].addressable_shards[0].data
    assert shard.shape == (16, 32 // model_size)


def test_model_axis_combines_with_fsdp_and_refuses_pmap():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "model": 2})
  assert mesh.axis_names == ("data", "fsdp", "model")
  tree = {"blocks_0": {"gate_proj": {"kernel": np.zeros((64, 128), np.float32)}}}
  from kdjax.parallel import _mesh
  spec = _mesh.shardings_by_rules(tree, mesh, ((r".*", True),))["blocks_0"]["gate_proj"][
      "kernel"].spec
  assert spec == P("fsdp", "model")
  assert _mesh.batch_shards(mesh) == 4
  with pytest.raises(ValueError, match="model > 1"):
    parallel.make_runner("pmap", mesh_shape={"data": -1, "model": 2})

"""Teachers trained elsewhere: Flax msgpack files and Orbax checkpoints of plain variable trees."""
import functools
import json
import os
import types

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from kdjax import data, models
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train.errors import CheckpointError


def variables(name, seed, input_shape=(8, 8, 1), **kwargs):
  """A zoo model's ``(params, model_state)`` filled with random numbers (nothing compiled)."""
  module = models.get_model(name, **kwargs)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          jnp.zeros((1, *input_shape), jnp.float32))
  rng = np.random.default_rng(seed)
  tree = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  return tree["params"], {k: v for k, v in tree.items() if k != "params"}


def cnn(seed):
  params, model_state = variables("cnn_small", seed, num_classes=10, width=4)
  return types.SimpleNamespace(params=params, model_state=model_state)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_msgpack_variables_with_batch_stats(tmp_path):
  target, saved = cnn(0), cnn(1)
  path = tmp_path / "teacher.msgpack"
  path.write_bytes(flax.serialization.to_bytes({"params": saved.params, **saved.model_state}))
  params, state = models.load_variables(path, params=target.params,
                                        model_state=target.model_state)
  assert_trees_equal(params, saved.params)
  assert_trees_equal(state, saved.model_state)
  assert "batch_stats" in state


def test_msgpack_params_alone_and_dtype_cast(tmp_path):
  target = types.SimpleNamespace(params=variables("mlp", 0, (4,), num_classes=3, hidden=(5,))[0])
  stored = jax.tree.map(lambda x: np.asarray(x, np.float64) + 1.0, target.params)
  path = tmp_path / "params.msgpack"
  path.write_bytes(flax.serialization.to_bytes(stored))
  params, state = models.load_variables(path, params=target.params, model_state={})
  assert state == {}
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(stored)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want.astype(np.float32))


def test_orbax_checkpoint_of_a_plain_tree(tmp_path):
  target, saved = cnn(0), cnn(2)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": saved.params, **saved.model_state})
  checkpointer.wait_until_finished()
  params, state = models.load_variables(tmp_path / "ckpt", params=target.params,
                                        model_state=target.model_state)
  assert_trees_equal(params, saved.params)
  assert_trees_equal(state, saved.model_state)


def test_mismatch_lists_the_differing_paths(tmp_path):
  small = types.SimpleNamespace(params=variables("mlp", 0, num_classes=10, hidden=(8,))[0])
  big = types.SimpleNamespace(params=variables("mlp", 1, num_classes=10, hidden=(16, 16))[0])
  path = tmp_path / "big.msgpack"
  path.write_bytes(flax.serialization.to_bytes({"params": big.params}))
  with pytest.raises(ValueError) as e:
    models.load_variables(path, params=small.params, model_state={})
  message = str(e.value)
  assert str(path) in message
  assert "params/stage1/dense/kernel: (64, 16) in the file, (64, 8) in the model" in message
  assert "params/stage2/dense/kernel: in the file (16, 16), not in the model" in message
  target = cnn(0)
  params_only = tmp_path / "params_only.msgpack"
  params_only.write_bytes(flax.serialization.to_bytes(target.params))
  with pytest.raises(ValueError, match="holds parameters only"):
    models.load_variables(params_only, params=target.params, model_state=target.model_state)
  bad = tmp_path / "bad.msgpack"
  bad.write_bytes(b"\xc1 not msgpack")
  with pytest.raises(ValueError, match="not a Flax msgpack file"):
    models.load_variables(bad, params=small.params, model_state={})
  with pytest.raises(ValueError, match="not an Orbax checkpoint"):
    models.load_variables(tmp_path, params=small.params, model_state={})


def test_teacher_checkpoint_delegates_to_load_variables(tmp_path):
  target, saved = cnn(0), cnn(3)
  path = tmp_path / "teacher.msgpack"
  path.write_bytes(flax.serialization.to_bytes({"params": saved.params, **saved.model_state}))
  params, state = ckpt_lib.load_model_variables(str(path), target.params, target.model_state)
  assert_trees_equal(params, saved.params)
  assert_trees_equal(state, saved.model_state)
  with pytest.raises(CheckpointError, match="config.teacher.checkpoint: .*batch_stats"):
    ckpt_lib.load_model_variables(str(path), target.params, {})


def train_plain_flax_teacher(path, steps=150):
  """What another codebase does: train a Linen module with optax, save its variables."""
  dataset = data.get_dataset("digits")
  x, y = dataset.source("train").images, dataset.source("train").labels.astype(np.int32)
  module = models.get_model("cnn_small", num_classes=10)
  variables = module.init(jax.random.key(0), x[:1], train=False)
  tx = optax.sgd(0.05, momentum=0.9)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(params, batch_stats, opt_state, xb, yb):
    def loss_fn(p):
      logits, updates = module.apply({"params": p, "batch_stats": batch_stats}, xb, train=True,
                                     mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
      return loss, updates["batch_stats"]
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  params, batch_stats = variables["params"], variables["batch_stats"]
  rng = np.random.default_rng(0)
  for _ in range(steps):
    rows = rng.integers(0, len(x), 64)
    params, batch_stats, opt_state = step(params, batch_stats, opt_state, x[rows], y[rows])
  with open(path, "wb") as f:
    f.write(flax.serialization.to_bytes({"params": params, "batch_stats": batch_stats}))
  test = dataset.source("test")
  logits = module.apply({"params": params, "batch_stats": batch_stats}, test.images, train=False)
  return float(np.mean(np.argmax(np.asarray(logits), -1) == test.labels))


@pytest.mark.slow
def test_plain_flax_teacher_distils_from_the_command_line(tmp_path):
  from tests.train.conftest import cli  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / "teacher.msgpack")
  accuracy = train_plain_flax_teacher(path)
  assert accuracy > 0.9
  workdir = tmp_path / "workdir"
  process = cli("--config=configs/quickstart.py", f"--config.teacher.checkpoint={path}",
                "--config.total_steps=100", "--config.progress_bar=False",
                f"--workdir={workdir}")
  _, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["teacher"]["checkpoint"] == path
  assert results["teacher"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
  assert results["student_kd"]["agreement"] > 0.5

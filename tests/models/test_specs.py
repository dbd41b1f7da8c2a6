"""Models by spec ('package.module:Attr') and by registered name."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import json

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import models

SPEC = "tests.models.my_net:MyNet"
SHAPE = (8, 8, 1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _x(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE)), jnp.float32)


def _logits(model, x):
  return model.apply(model.params, model.model_state, x, train=False, rng=None)[0].logits


def test_linen_class_by_spec():
  model = models.create(SPEC, num_classes=10, input_shape=SHAPE, rng=jax.random.key(0),
                        taps=("pre_logits", "conv"), width=4)
  assert model.name == SPEC
  assert set(model.model_state) == {"batch_stats"}
  out, _ = model.apply(model.params, model.model_state, _x(), train=False, rng=None)
  assert out.logits.shape == (4, 10)
  assert out.features["pre_logits"].shape == (4, 4)
  assert models.get_model(SPEC, num_classes=3).num_classes == 3  # the bare Linen module


def test_nnx_class_and_factory_by_spec():
  nnx_model = models.create("tests.models.my_net:MyNNXNet", num_classes=6, input_shape=SHAPE,
                            rng=jax.random.key(1))
  assert _logits(nnx_model, _x()).shape == (4, 6)
  fn_model = models.create("tests.models.my_net:my_factory", num_classes=3, input_shape=SHAPE,
                           rng=jax.random.key(2))
  assert fn_model.name == "tests.models.my_net:my_factory"
  expected = _x().reshape(4, -1) @ fn_model.params["w"]
  np.testing.assert_allclose(_logits(fn_model, _x()), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="Linen modules only"):
    models.get_model("tests.models.my_net:MyNNXNet", num_classes=3)


def test_register_as_decorator_and_call():
  @models.register("spec_test_mlp")
  class TinyMLP(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))

  assert "spec_test_mlp" in models.registered_models()
  model = models.create("spec_test_mlp", num_classes=4, input_shape=SHAPE, rng=jax.random.key(0))
  assert _logits(model, _x()).shape == (4, 4)
  from tests.models import my_net  # pylint: disable=g-import-not-at-top
  assert models.register("spec_test_nnx", my_net.MyNNXNet) is my_net.MyNNXNet
  with pytest.raises(ValueError, match="is a zoo model"):
    models.register("resnet8", TinyMLP)
  with pytest.raises(ValueError, match="already registered"):
    models.register("spec_test_mlp", my_net.MyNet)
  with pytest.raises(TypeError, match="not a model"):
    models.register("spec_test_bad", 3)


@pytest.mark.parametrize("spec, message", [
    ("tests.models.no_such_module:Net",
     r"^config\.teacher\.model='tests\.models\.no_such_module:Net': cannot import module "
     r"'tests\.models\.no_such_module' \(No module named .*PYTHONPATH$"),
    ("tests.models.my_net:MyNett",
     r"^config\.teacher\.model='tests\.models\.my_net:MyNett': tests\.models\.my_net has no "
     r"attribute 'MyNett' \(did you mean 'MyNet'\?\)$"),
    ("tests.models.my_net:NOT_A_MODEL",
     r"^config\.teacher\.model='tests\.models\.my_net:NOT_A_MODEL' is an int, not a model: give "
     r"a Flax Linen module class, a Flax NNX module class, or a function returning a "
     r"kdjax\.models\.Model$"),
    ("resnet9", r"^config\.teacher\.model='resnet9' is not a kdjax model; available: "
                r"cnn_small, .*'package\.module:ClassOrFactory'; did you mean 'resnet8'\?$"),
    (":Net", r"is not a model spec; write 'package\.module:ClassOrFactory'$"),
])
def test_spec_errors_are_one_line_and_name_the_key(spec, message):
  with pytest.raises(ValueError, match=message) as e:
    models.check_model(spec, key="config.teacher.model")
  assert "\n" not in str(e.value)


def test_logits_must_have_num_classes():
  with pytest.raises(ValueError, match=r"logits of shape \(1, 5\).*not 10 classes"):
    models.create("tests.models.my_net:Broken", num_classes=10, input_shape=SHAPE,
                  rng=jax.random.key(0))
  with pytest.raises(TypeError, match="unexpected keyword"):
    models.create(SPEC, num_classes=10, input_shape=SHAPE, rng=jax.random.key(0), depth=3)
  with pytest.raises(TypeError, match="no dtype field"):
    models.create(SPEC, num_classes=10, input_shape=SHAPE, rng=jax.random.key(0),
                  dtype=jnp.bfloat16)


def _train_and_save(path):
  """A user's own training script: a few SGD steps of MyNet, saved as Flax msgpack."""
  module = models.get_model(SPEC, num_classes=10)
  x = _x(16, seed=1)
  labels = jnp.asarray(np.arange(16) % 10)
  variables = module.init(jax.random.key(7), x, train=False)
  params, stats = variables["params"], {"batch_stats": variables["batch_stats"]}
  tx = optax.sgd(0.5)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def loss(p):
      logits, new = module.apply({"params": p, **stats}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new
    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), new_stats, opt

  for _ in range(3):
    params, stats, opt = step(params, stats, opt)
  variables = {"params": params, **stats}
  with open(path, "wb") as f:
    f.write(flax.serialization.to_bytes(variables))
  return module.apply(variables, _x(), train=False)


def test_trained_msgpack_loads_into_the_spec_model(tmp_path):
  path = os.fspath(tmp_path / "teacher.msgpack")
  expected = _train_and_save(path)
  fresh = models.create(SPEC, num_classes=10, input_shape=SHAPE, rng=jax.random.key(0))
  params, state = models.load_variables(path, params=fresh.params, model_state=fresh.model_state)
  loaded = dataclasses.replace(fresh, params=params, model_state=state)
  np.testing.assert_allclose(_logits(loaded, _x()), expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(_logits(fresh, _x()), expected)
  wider = models.create(SPEC, num_classes=10, input_shape=SHAPE, rng=jax.random.key(0), width=4)
  with pytest.raises(ValueError, match=r"params/conv/kernel: \(3, 3, 1, 8\) in the file"):
    models.load_variables(path, params=wider.params, model_state=wider.model_state)


@pytest.mark.slow
def test_cli_distils_from_a_user_teacher_saved_as_msgpack(tmp_path):
  path = os.fspath(tmp_path / "teacher.msgpack")
  _train_and_save(path)
  workdir = os.fspath(tmp_path / "work")
  result = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "--config=configs/quickstart.py",
       f"--config.teacher.model={SPEC}", f"--config.teacher.checkpoint={path}",
       "--config.total_steps=20", "--config.eval_every=0", "--config.checked_steps=0",
       "--config.progress_bar=False", f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert {"teacher", "student_kd"} <= set(results)

"""Optimizers, learning-rate schedules, objectives and models built from config values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import objectives
from kdjax.train import builders
from kdjax.train import config as config_lib
from kdjax.train import schema
from kdjax.train.errors import ConfigError


def opt(**overrides):
  config = config_lib.resolve({"optimizer": overrides, "total_steps": 100})
  return config.optimizer


def lr_at(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_cosine_with_warmup():
  schedule = builders.learning_rate_schedule(opt(learning_rate=0.4, warmup_steps=10,
                                                 min_learning_rate=0.04),
                                             total_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose(lr_at(schedule, [0, 5, 10]), [0.0, 0.2, 0.4], rtol=1e-6)
  # Cosine from 0.4 at step 10 down to 0.04 at step 100; halfway (step 55) is the mean.
  np.testing.assert_allclose(lr_at(schedule, [55, 100]), [0.22, 0.04], rtol=1e-5)


def test_step_schedule_in_steps_and_epochs():
  by_steps = builders.learning_rate_schedule(
      opt(schedule="step", learning_rate=1.0, decay_steps=(30, 60), decay_factor=0.1),
      total_steps=100, steps_per_epoch=10)
  # The schedule is called with the number of updates done so far: after 30 updates the rate
  # drops, so update 31 (count 30) is the first at 0.1.
  np.testing.assert_allclose(lr_at(by_steps, [0, 29, 30, 59, 60, 99]),
                             [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  # 2.5 and 5 epochs of 12 steps: boundaries at steps 30 and 60, counted with the warm-up.
  by_epochs = builders.learning_rate_schedule(
      opt(schedule="step", learning_rate=1.0, decay_epochs=(2.5, 5.0), decay_factor=0.1,
          warmup_steps=5), total_steps=100, steps_per_epoch=12)
  np.testing.assert_allclose(lr_at(by_epochs, [0, 5, 29, 30, 60]), [0.0, 1.0, 1.0, 0.1, 0.01],
                             rtol=1e-6)


def test_constant_schedule():
  schedule = builders.learning_rate_schedule(opt(schedule="constant", learning_rate=0.3),
                                             total_steps=100, steps_per_epoch=1)
  np.testing.assert_allclose(lr_at(schedule, [0, 50, 99]), [0.3] * 3, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(schema.OPTIMIZERS))
def test_weight_decay_skips_biases_and_scales(name):
  tx, _ = builders.make_optimizer(
      opt(name=name, schedule="constant", learning_rate=0.1, weight_decay=0.5),
      total_steps=100, steps_per_epoch=1)
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
            "bn": {"scale": jnp.ones((2,))}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  # optax's Adam bias correction raises a float to an int32 power: standard promotion only.
  with jax.numpy_dtype_promotion("standard"):
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
  # With zero gradients only weight decay moves parameters: kernels shrink, the rest stays.
  assert float(jnp.max(updates["dense"]["kernel"])) < 0
  assert float(jnp.max(jnp.abs(updates["dense"]["bias"]))) == 0
  assert float(jnp.max(jnp.abs(updates["bn"]["scale"]))) == 0


def test_gradient_clipping():
  tx, _ = builders.make_optimizer(opt(name="sgd", schedule="constant", learning_rate=1.0,
                                      weight_decay=0.0, grad_clip_norm=1.0),
                                  total_steps=100, steps_per_epoch=1)
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), 1.0, rtol=1e-6)


def test_objective_weights_and_warmup(rng_outputs):
  student, teacher, batch = rng_outputs
  objective = builders.make_objective({
      "ce": {"kind": "cross_entropy", "weight": 0.25},
      "kd": {"kind": "kd", "weight": 2.0, "warmup_steps": 10, "temperature": 2.0},
  })
  params, state = objective.init(jax.random.key(0), student, teacher, batch)
  ce = objectives.cross_entropy().apply({}, {}, student, teacher, batch, 0)[0]
  kd = objectives.kd(temperature=2.0).apply({}, {}, student, teacher, batch, 0)[0]
  for step, kd_weight in [(0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)]:
    loss, _, metrics = objective.apply(params, state, student, teacher, batch,
                                       jnp.asarray(step, jnp.int32))
    np.testing.assert_allclose(float(metrics["kd/weight"]), kd_weight, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.25 * float(ce) + kd_weight * float(kd), rtol=1e-5)


@pytest.fixture(name="rng_outputs")
def fixture_rng_outputs():
  from kdjax.models import Outputs
  rng = np.random.default_rng(0)
  student = Outputs(logits=jnp.asarray(rng.standard_normal((8, 5)), jnp.float32))
  teacher = Outputs(logits=jnp.asarray(rng.standard_normal((8, 5)), jnp.float32))
  batch = {"label": jnp.asarray(rng.integers(0, 5, 8), jnp.int32)}
  return student, teacher, batch


@pytest.mark.parametrize("spec, message", [
    ({"x": {"kind": "fitnets"}}, "needs ['student', 'teacher']"),
    ({"x": {"kind": "kd", "tau": 2.0}}, "takes no argument(s) ['tau']"),
    ({"x": {"kind": "hinton"}}, "is not a kdjax objective term"),
    ({"x": {"kind": "fitnets", "student": "a", "teacher": ["b", "c"]}}, "config.objective.x"),
])
def test_objective_errors(spec, message):
  with pytest.raises(ConfigError) as caught:
    builders.make_objective(spec)
  assert message in str(caught.value)


def test_taps_come_from_the_objective():
  spec = {"ce": {"kind": "cross_entropy"}, "kd": {"kind": "kd"},
          "rkd": {"kind": "rkd"},
          "fit": {"kind": "fitnets", "student": "stage1", "teacher": ["stage2"]},
          "at": {"kind": "attention_transfer", "student": ["stage1", "stage2"],
                 "teacher": ["stage2", "stage3"]}}
  needs = builders.make_objective(spec).needs
  assert needs.student == ("pre_logits", "stage1", "stage2")
  assert needs.teacher == ("pre_logits", "stage2", "stage3")
  assert needs.batch == ("label",)
  kd = builders.make_objective({"kd": {"kind": "kd"}}).needs
  assert (kd.student, kd.teacher, kd.batch) == ((), (), ())


def test_model_errors_name_the_key():
  config = config_lib.resolve({"student": {"model": "mlp", "model_kwargs": {"widths": (4,)}}},
                              num_classes=10)
  with pytest.raises(ConfigError, match="config.student.model_kwargs"):
    builders.make_model(config.student, side="student", input_shape=(8, 8, 1),
                        rng=jax.random.key(0))
  with pytest.raises(ConfigError, match="did you mean 'resnet8'"):
    schema.check_model_name("resnet9", "teacher.model")
  config = config_lib.resolve({}, num_classes=10)
  with pytest.raises(ConfigError, match="config.objective"):
    builders.make_model(config.student, side="student", input_shape=(8, 8, 1),
                        rng=jax.random.key(0), taps=("no_such_layer",))


def test_stages_switch_terms_on_and_off(rng_outputs):
  student, teacher, batch = rng_outputs
  spec = {"ce": {"kind": "cross_entropy", "weight": 0.5},
          "kd": {"kind": "kd", "weight": 2.0, "warmup_steps": 10, "temperature": 2.0}}
  # Stage 1 (steps 0-3): KD alone; stage 2 (4-7): CE alone; stage 3 (8-): both.
  stages = ({"steps": 4, "terms": ("kd",)}, {"steps": 4, "terms": ("ce",)},
            {"steps": 0, "terms": ("ce", "kd")})
  objective = builders.make_objective(spec, stages=config_lib.resolve(
      {"objective": spec, "stages": stages, "total_steps": 20}).stages)
  params, state = objective.init(jax.random.key(0), student, teacher, batch)
  ce = float(objectives.cross_entropy().apply({}, {}, student, teacher, batch, 0)[0])
  kd = float(objectives.kd(temperature=2.0).apply({}, {}, student, teacher, batch, 0)[0])
  # The KD weight keeps its own warm-up (2.0 * step / 10) inside the stages that include it.
  expected = {0: (0.0, 0.0), 3: (0.0, 0.6), 4: (0.5, 0.0), 7: (0.5, 0.0), 8: (0.5, 1.6),
              15: (0.5, 2.0)}
  for step, (w_ce, w_kd) in expected.items():
    loss, _, metrics = objective.apply(params, state, student, teacher, batch,
                                       jnp.asarray(step, jnp.int32))
    np.testing.assert_allclose(float(metrics["ce/weight"]), w_ce, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(metrics["kd/weight"]), w_kd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(loss), w_ce * ce + w_kd * kd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stages, message", [
    (({"steps": 4, "terms": ("kd",)}, {"steps": 0, "terms": ("hint",)}),
     "config.stages[1].terms names ['hint']"),
    (({"steps": 0, "terms": ("kd",)}, {"steps": 4, "terms": ("ce",)}),
     "config.stages[0].steps must be an integer >= 1"),
    (({"steps": 15, "terms": ("kd",)}, {"steps": 10, "terms": ("ce",)}),
     "config.stages add up to 25 steps but config.total_steps is 20"),
    (({"steps": 4},), "exactly the keys 'steps' and 'terms'"),
    (({"steps": 4, "terms": ()},), "must be a non-empty tuple of term names"),
])
def test_bad_stages_name_the_fix(stages, message):
  spec = {"ce": {"kind": "cross_entropy"}, "kd": {"kind": "kd"}}
  with pytest.raises(ConfigError) as caught:
    config_lib.resolve({"objective": spec, "stages": stages, "total_steps": 20})
  assert message in str(caught.value)


def test_make_objective_checks_stages_like_the_config():
  spec = {"ce": {"kind": "cross_entropy"}, "kd": {"kind": "kd"}}
  with pytest.raises(ConfigError, match=r"config.stages\[1\].terms names \['hint'\]"):
    builders.make_objective(spec, stages=[{"steps": 4, "terms": ["kd"]},
                                          {"steps": 0, "terms": ["hint"]}])
  with pytest.raises(ConfigError, match=r"config.stages\[0\].steps must be an integer >= 1"):
    builders.make_objective(spec, stages=[{"steps": 0, "terms": ["kd"]},
                                          {"steps": 4, "terms": ["ce"]}])


def test_crd_takes_the_dataset_size_from_the_run():
  spec = {"crd": {"kind": "crd", "feat_dim": 4, "num_negatives": 3}}
  with pytest.raises(ConfigError, match="needs num_data, which this run cannot supply"):
    builders.make_objective(spec)
  from kdjax.models import Outputs
  student = Outputs(logits=jnp.zeros((2, 3)), features={"pre_logits": jnp.zeros((2, 5))})
  teacher = Outputs(logits=jnp.zeros((2, 3)), features={"pre_logits": jnp.zeros((2, 6))})
  batch = {"index": jnp.zeros((2,), jnp.int32), "mask": jnp.ones((2,), bool)}
  _, state = builders.make_objective(spec, supplied={"num_data": 37}).init(
      jax.random.key(0), student, teacher, batch)
  # One memory row per training example, in each of the two banks.
  assert {leaf.shape for leaf in jax.tree.leaves(state) if leaf.ndim == 2} == {(37, 4)}

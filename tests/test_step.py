"""distill_step / eval_step: purity, teacher frozen, exact updates, no recompilation."""
import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import models, objectives
from tests import helpers

KD_CE = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                            "kd": (objectives.kd(temperature=4.0), 0.9)})


def _create(student, teacher, objective=KD_CE, tx=None, batch=None, **kw):
  batch = helpers.batch() if batch is None else batch
  return kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                   tx=tx or optax.sgd(0.1, momentum=0.9), rng=jax.random.key(0),
                                   example_batch=batch, **kw)


def test_linen_pair_teacher_frozen_and_no_recompile():
  teacher = helpers.tap_mlp(0, hidden=32, batch_norm=True)
  student = helpers.tap_mlp(1, batch_norm=True)
  state = _create(student, teacher)
  t_params, t_state = jax.tree.map(np.array, (state.teacher_params, state.teacher_state))
  s_stats = jax.tree.map(np.array, state.student_state)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch):
    return kdjax.distill_step(state, batch)

  for i in range(3):
    state, metrics = step(state, helpers.batch(seed=i))
  assert int(state.step) == 3
  assert set(metrics) >= {"loss", "ce", "kd", "accuracy", "agreement"}
  chex.assert_trees_all_equal(state.teacher_params, t_params)
  chex.assert_trees_all_equal(state.teacher_state, t_state)
  # The student's BatchNorm statistics do move.
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.student_state, s_stats)
  assert max(jax.tree.leaves(diff)) > 0


class NNXNet(nnx.Module):

  def __init__(self, din, hidden, classes, rngs):
    self.stage1 = nnx.Linear(din, hidden, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.head = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, x):
    return self.head(self.drop(nnx.relu(self.bn(self.stage1(x)))))


def test_nnx_pair_runs_under_jit_and_teacher_is_frozen():
  teacher = models.from_nnx(NNXNet(6, 32, 5, nnx.Rngs(0)))
  student = models.from_nnx(NNXNet(6, 8, 5, nnx.Rngs(1)))
  state = _create(student, teacher)
  t_before = jax.tree.map(np.array, (state.teacher_params, state.teacher_state))
  step = jax.jit(chex.assert_max_traces(kdjax.distill_step, n=1))
  losses = []
  for i in range(20):
    state, metrics = step(state, helpers.batch(seed=0))
    losses.append(float(metrics["loss"]))
  chex.assert_trees_all_equal((state.teacher_params, state.teacher_state), t_before)
  assert losses[-1] < losses[0]


def test_update_equals_the_kd_gradient_written_out():
  """With SGD (lr) and only a KD term, W' = W - lr * X^T T (p_s - p_t) / B."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 6)).astype(np.float32)
  w_s = rng.standard_normal((6, 5)).astype(np.float32)
  w_t = rng.standard_normal((6, 5)).astype(np.float32)
  student = models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.asarray(w_s)})
  teacher = models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.asarray(w_t)})
  T, lr = 3.0, 0.5
  batch = {"image": x, "label": np.zeros(8, np.int32)}
  state = _create(student, teacher, objectives.combine({"kd": objectives.kd(temperature=T)}),
                  tx=optax.sgd(lr), batch=batch)
  state, _ = jax.jit(kdjax.distill_step)(state, batch)

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  x64 = x.astype(np.float64)
  dlogits = T * (softmax(x64 @ w_s / T) - softmax(x64 @ w_t / T)) / len(x)
  expected = w_s - lr * x64.T @ dlogits
  np.testing.assert_allclose(state.params["student"]["w"], expected, rtol=2e-5, atol=1e-6)


def test_feature_and_relation_terms_with_adapters_train_end_to_end():
  teacher = helpers.tap_mlp(0, hidden=24, taps=("stage1", "pre_logits"))
  student = helpers.tap_mlp(1, hidden=8, taps=("stage1", "pre_logits"))
  objective = objectives.combine({
      "fitnets": objectives.fitnets(student="stage1", teacher="stage1"),
      "rkd": objectives.projected(kdjax.losses.rkd_distance),
      "sp": objectives.similarity_preserving(),
  })
  state = _create(student, teacher, objective, tx=optax.adam(1e-2))
  assert state.params["objective"]["fitnets"]["adapter_0"]["out"]["kernel"].shape == (8, 24)
  adapter_before = np.array(state.params["objective"]["fitnets"]["adapter_0"]["out"]["kernel"])
  step = jax.jit(kdjax.distill_step)
  batch = helpers.batch(n=16)
  first = None
  for _ in range(60):
    state, metrics = step(state, batch)
    first = first or {k: float(metrics[k]) for k in ("fitnets", "rkd", "sp", "loss")}
  for k in ("fitnets", "rkd", "sp", "loss"):
    assert float(metrics[k]) < 0.7 * first[k], (k, first[k], float(metrics[k]))
  assert not np.allclose(state.params["objective"]["fitnets"]["adapter_0"]["out"]["kernel"],
                         adapter_before)


def test_eval_step_reports_predictions_agreement_and_mask():
  teacher = helpers.tap_mlp(0, hidden=32, num_classes=6)
  student = helpers.tap_mlp(1, num_classes=6)
  batch = helpers.batch(num_classes=6)
  state = _create(student, teacher, batch=batch)
  out = jax.jit(kdjax.eval_step)(state, {**batch, "mask": np.ones(8, bool)})
  s_logits = student.apply(student.params, student.model_state, batch["image"], train=False,
                           rng=None)[0].logits
  t_logits = teacher.apply(teacher.params, teacher.model_state, batch["image"], train=False,
                           rng=None)[0].logits
  np.testing.assert_array_equal(out["prediction"], np.argmax(s_logits, -1))
  np.testing.assert_array_equal(out["agreement"],
                                np.argmax(s_logits, -1) == np.argmax(t_logits, -1))
  np.testing.assert_array_equal(out["correct"], np.argmax(s_logits, -1) == batch["label"])
  top5 = np.argsort(-np.asarray(s_logits), -1)[:, :5]
  np.testing.assert_array_equal(out["top5"], (top5 == batch["label"][:, None]).any(-1))
  assert out["mask"].shape == (8,)


def test_class_count_mismatch_names_the_fix():
  with pytest.raises(ValueError, match="teacher logits have 7 classes but the student has 5"):
    _create(helpers.tap_mlp(1), helpers.tap_mlp(0, num_classes=7))


def test_accumulation_must_divide_the_batch():
  with pytest.raises(ValueError, match="accumulation_steps=3"):
    _create(helpers.tap_mlp(1), None, objectives.cross_entropy(), accumulation_steps=3)


def test_mixed_precision_keeps_parameters_optimizer_state_and_losses_in_float32():
  # Teacher and student compute in bfloat16; what the optimizer sees stays float32.
  def pair(dtype):
    kw = dict(num_classes=5, input_shape=(8, 8, 1), dtype=dtype, width=4,
              taps=("pre_logits",))
    return (models.create("cnn_small", rng=jax.random.key(1), **kw),
            models.create("cnn_small", rng=jax.random.key(0), **kw))

  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((8, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 5, 8).astype(np.int32)}
  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                  "kd": (objectives.kd(temperature=4.0), 0.9),
                                  "rkd": (objectives.rkd(), 0.1)})
  results = {}
  for name, dtype in (("bf16", jnp.bfloat16), ("f32", jnp.float32)):
    student, teacher = pair(dtype)
    out, _ = student.apply(student.params, student.model_state, batch["image"], train=False,
                           rng=None)
    assert out.features["pre_logits"].dtype == dtype  # the activations really are bf16
    state = _create(student, teacher, objective=objective, batch=batch,
                    tx=optax.adamw(1e-2))
    state, metrics = jax.jit(kdjax.distill_step)(state, batch)
    floats = [x for x in jax.tree.leaves((state.params, state.opt_state, state.student_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats), name
    assert all(metrics[k].dtype == jnp.float32 for k in ("loss", "ce", "kd", "rkd")), name
    results[name] = metrics
  # The same variables computed in bfloat16 give the float32 losses up to bf16 rounding.
  for k in ("loss", "ce", "kd", "rkd"):
    np.testing.assert_allclose(float(results["bf16"][k]), float(results["f32"][k]), rtol=0.05,
                               atol=1e-3, err_msg=k)

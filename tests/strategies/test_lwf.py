"""Learning without Forgetting: head expansion, the objective's formula, and less forgetting."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import models, objectives, strategies
from kdjax.models import Outputs
from tests import helpers
from tests.strategies._np_ref import kl, logits_of, softmax

OLD, NEW, DIM = 3, 3, 6


def _task(classes, seed, n_per_class=32):
  rng = np.random.default_rng(seed)
  means = rng.normal(0.0, 1.5, (len(classes), DIM))
  x = np.concatenate([m + rng.normal(0.0, 1.0, (n_per_class, DIM)) for m in means])
  y = np.repeat(np.asarray(classes), n_per_class)
  return {"image": x.astype(np.float32), "label": y.astype(np.int32)}


def _train(student, teacher, objective, data, steps, lr):
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(lr, momentum=0.9), rng=jax.random.key(0),
                                    example_batch=data)
  step = jax.jit(kdjax.distill_step)
  for _ in range(steps):
    state, _ = step(state, data)
  return state


def _widened(old_params, rng=None):
  module = helpers.TapMLP(hidden=16, num_classes=OLD + NEW)
  params = strategies.expand_head(old_params, NEW, head="head", rng=rng)
  return models.from_linen(module, {"params": params})


def test_expand_head_keeps_the_old_logits():
  old = helpers.tap_mlp(0, num_classes=OLD)
  x = helpers.batch()["image"]
  for rng in (None, jax.random.key(1)):
    wide = _widened(old.params, rng)
    head = wide.params["head"]
    assert head["kernel"].shape == (16, OLD + NEW) and head["bias"].shape == (OLD + NEW,)
    np.testing.assert_array_equal(head["kernel"][:, :OLD], old.params["head"]["kernel"])
    np.testing.assert_array_equal(head["bias"][OLD:], np.zeros(NEW))
    np.testing.assert_allclose(logits_of(wide, x)[:, :OLD], logits_of(old, x), rtol=1e-6)
    assert (np.abs(head["kernel"][:, OLD:]).max() > 0) == (rng is not None)
    # Everything but the head is the old model's.
    np.testing.assert_array_equal(wide.params["stage1"]["kernel"], old.params["stage1"]["kernel"])
  with pytest.raises(ValueError, match="no 'classifier'"):
    strategies.expand_head(old.params, NEW, head="classifier")


def test_objective_is_new_ce_plus_kd_on_the_old_slice():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.standard_normal((4, OLD + NEW)), jnp.float32)
  t_old = jnp.asarray(rng.standard_normal((4, OLD)), jnp.float32)
  teacher = strategies.lwf_teacher(
      models.from_apply_fn(lambda p, x: x, {}), num_new=NEW)
  t_out, _ = teacher.apply({}, {}, t_old, train=False, rng=None)
  assert t_out.logits.shape == (4, OLD + NEW) and np.all(np.isneginf(t_out.logits[:, OLD:]))
  labels = jnp.asarray([3, 4, 5, 3], jnp.int32)
  T, w = 2.0, 0.3
  obj = strategies.lwf_objective(OLD, temperature=T, lwf_weight=w)
  batch = {"label": labels}
  params, state = obj.init(jax.random.key(0), Outputs(s), t_out, batch)
  loss, _, metrics = obj.apply(params, state, Outputs(s), t_out, batch, jnp.int32(0))
  s64 = np.asarray(s, np.float64)
  p_new = softmax(s64[:, OLD:])
  ce = -np.log(p_new[np.arange(4), np.asarray(labels) - OLD]).mean()
  distill = T**2 * kl(softmax(np.asarray(t_old, np.float64) / T), softmax(s64[:, :OLD] / T)).mean()
  np.testing.assert_allclose(metrics["new_ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["lwf"], distill, rtol=1e-5)
  np.testing.assert_allclose(loss, ce + w * distill, rtol=1e-5)


def test_lwf_forgets_less_than_plain_fine_tuning():
  task1 = _task(range(OLD), seed=1)
  task2 = _task(range(OLD, OLD + NEW), seed=2)
  old_state = _train(helpers.tap_mlp(0, num_classes=OLD), None, objectives.cross_entropy(),
                     task1, steps=150, lr=0.1)
  old = strategies.as_teacher(old_state)
  old_logits = logits_of(old, task1["image"])
  assert np.mean(np.argmax(old_logits, -1) == task1["label"]) > 0.8

  results = {}
  for name, weight in (("lwf", 1.0), ("plain", 0.0)):
    state = _train(_widened(old.params), strategies.lwf_teacher(old, num_new=NEW),
                   strategies.lwf_objective(OLD, temperature=2.0, lwf_weight=weight), task2,
                   steps=150, lr=0.1)
    z = logits_of(strategies.as_teacher(state), task1["image"])
    z_new = logits_of(strategies.as_teacher(state), task2["image"])
    results[name] = {
        "kl": kl(softmax(old_logits), softmax(z[:, :OLD])).mean(),
        "old_acc": np.mean(np.argmax(z[:, :OLD], -1) == task1["label"]),
        "new_acc": np.mean(np.argmax(z_new[:, OLD:], -1) + OLD == task2["label"]),
    }
  lwf, plain = results["lwf"], results["plain"]
  assert lwf["kl"] < 0.5 * plain["kl"], results
  assert lwf["old_acc"] >= plain["old_acc"], results
  assert lwf["new_acc"] > 0.8 and plain["new_acc"] > 0.8, results

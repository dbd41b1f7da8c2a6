"""Born-again generations and teacher-assistant chains pass each trained model on."""
import chex
import jax
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives, strategies
from tests import helpers

_STEP = jax.jit(kdjax.distill_step)


def _recording_train_fn(calls, steps=3):
  def train_fn(student, teacher):
    calls.append((student, teacher))
    terms = {"ce": objectives.cross_entropy()}
    if teacher is not None:
      terms["kd"] = objectives.kd(temperature=2.0)
    state = kdjax.DistillState.create(student=student, teacher=teacher,
                                      objective=objectives.combine(terms), tx=optax.sgd(0.1),
                                      rng=jax.random.key(0), example_batch=helpers.batch())
    for i in range(steps):
      state, _ = _STEP(state, helpers.batch(seed=i))
    return state
  return train_fn


def _changed(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))) > 0


def test_generation_g_plus_1_distils_from_trained_generation_g():
  calls, made = [], []

  def make_student(g):
    made.append(g)
    return helpers.tap_mlp(10 + g, hidden=8)

  states = strategies.born_again_generations(make_student, _recording_train_fn(calls), 3)
  assert made == [0, 1, 2] and len(states) == 3
  assert calls[0][1] is None  # generation 0 learns from the labels alone
  for g in (1, 2):
    student, teacher = calls[g]
    previous = states[g - 1]
    # The teacher of generation g is generation g-1's *trained* student, frozen.
    chex.assert_trees_all_equal(teacher.params, previous.params["student"])
    chex.assert_trees_all_equal(teacher.model_state, previous.student_state)
    assert teacher.apply is previous.student_apply
    assert _changed(previous.params["student"], calls[g - 1][0].params)
    # ... and it is the teacher the distillation state actually holds.
    chex.assert_trees_all_equal(states[g].teacher_params, previous.params["student"])
  x = helpers.batch()["image"]
  gen1 = strategies.as_teacher(states[1])
  out, _ = gen1.apply(gen1.params, gen1.model_state, x, train=False, rng=None)
  np.testing.assert_array_equal(np.argmax(out.logits, -1),
                                jax.jit(kdjax.eval_step)(states[1], helpers.batch())["prediction"])


def test_teacher_assistant_chain_passes_each_trained_model_on():
  calls = []
  teacher = helpers.tap_mlp(0, hidden=32)
  chain = [teacher, helpers.tap_mlp(1, hidden=16), helpers.tap_mlp(2, hidden=4)]
  states = strategies.teacher_assistant_chain(chain, _recording_train_fn(calls))
  assert len(states) == 2 and len(calls) == 2
  assert calls[0][0] is chain[1] and calls[0][1] is teacher
  assert calls[1][0] is chain[2]
  chex.assert_trees_all_equal(calls[1][1].params, states[0].params["student"])
  assert _changed(states[0].params["student"], chain[1].params)
  # The last state is the small student's, distilled from the assistant.
  chex.assert_trees_all_equal_shapes(states[1].params["student"], chain[2].params)
  chex.assert_trees_all_equal(states[1].teacher_params, states[0].params["student"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="generations must be >= 1"):
    strategies.born_again_generations(lambda g: None, lambda s, t: None, 0)
  with pytest.raises(ValueError, match="at least one model to train"):
    strategies.teacher_assistant_chain([helpers.tap_mlp(0)], lambda s, t: None)
  with pytest.raises(TypeError, match="DistillState"):
    strategies.as_teacher({"params": {}})

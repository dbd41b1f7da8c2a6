"""Several teachers, one per example (routed_teacher): each example is distilled from the teacher
its teacher_id names, each teacher runs on its own examples, bad ids fail clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import lm, models, objectives
from kdjax.models.zoo import DecoderConfig

V, B, L, T = 13, 6, 5, 2.0
TOKENS = np.random.default_rng(0).integers(0, V, (B, L)).astype(np.int32)
IDS = np.array([1, 0, 2, 1, 0, 1], np.int32)
MASK = np.ones((B, L), bool)
MASK[2, 3:] = False


def _decoder(seed, width=8):
  config = DecoderConfig(vocab_size=V, hidden_size=width, intermediate_size=2 * width,
                         num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4)
  return models.decoder_model(config, rng=jax.random.key(seed))


TEACHERS = [_decoder(10, 16), _decoder(11, 8), _decoder(12, 16)]
STUDENT = _decoder(1)


def _logits(model, x):
  return np.asarray(model.apply(model.params, {}, jnp.asarray(x), train=False, rng=None)[0].logits,
                    np.float64)


def _routed_inputs(ids=IDS):
  return {"inputs": jnp.asarray(TOKENS), "teacher_id": jnp.asarray(ids)}


@pytest.mark.parametrize("capacity", [None, 3])
def test_each_example_gets_its_teachers_outputs(capacity):
  teacher = lm.routed_teacher(TEACHERS, capacity=capacity)
  out, _ = jax.jit(lambda p, s, x: teacher.apply(p, s, x, train=False, rng=None))(
      teacher.params, teacher.model_state, _routed_inputs())
  assert bool(out.features["routed"].all())
  for b in range(B):
    want = _logits(TEACHERS[IDS[b]], TOKENS[b:b + 1])[0]
    np.testing.assert_allclose(out.logits[b], want, rtol=2e-5, atol=2e-5)


def test_past_capacity_or_out_of_range_gets_no_teacher():
  teacher = lm.routed_teacher(TEACHERS[:2], capacity=2)
  out, _ = teacher.apply(teacher.params, teacher.model_state, _routed_inputs(IDS), train=False,
                         rng=None)
  # Teacher 1 has 3 examples (rows 0, 3, 5): the third is past capacity 2; id 2 has no teacher.
  np.testing.assert_array_equal(out.features["routed"], [True, True, False, True, True, False])
  assert float(jnp.abs(out.logits[2]).max()) == 0.0 and float(jnp.abs(out.logits[5]).max()) == 0.0


def _step(teachers, ids):
  """The kd metric of one distill step from the routed teachers."""
  objective = objectives.combine({"kd": (lm.token_kd_term(temperature=T), 1.0)})
  batch = {"tokens": jnp.asarray(TOKENS), "targets": jnp.asarray(TOKENS),
           "mask": jnp.asarray(MASK), lm.ROUTED_INPUTS_KEY: _routed_inputs(ids)}
  state = kdjax.DistillState.create(
      student=STUDENT, teacher=lm.routed_teacher(teachers), objective=objective,
      tx=optax.sgd(0.0), rng=jax.random.key(0), example_batch=batch, input_key="tokens",
      label_key="targets", teacher_input_key=lm.ROUTED_INPUTS_KEY)
  _, metrics = jax.jit(kdjax.distill_step)(state, batch)
  return float(metrics["kd"])


ROUTED = lm.routed_teacher(TEACHERS)


@jax.jit
def _loss_and_grad(student_params, teacher_params, ids):
  """The token KD loss from the routed teachers and its gradient in the student's parameters."""
  batch = {"mask": jnp.asarray(MASK)}
  t = ROUTED.apply(teacher_params, ROUTED.model_state, _routed_inputs(ids), train=False,
                   rng=None)[0]

  def loss(p):
    s = STUDENT.apply(p, {}, jnp.asarray(TOKENS), train=False, rng=None)[0]
    return lm.token_kd_term(temperature=T).apply(None, None, s, t, batch, 0)[0]

  return jax.value_and_grad(loss)(student_params)


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_step_loss_is_the_per_example_formula_with_the_routed_teacher():
  kd = _step(TEACHERS, IDS)
  s = _logits(STUDENT, TOKENS)
  total, count = 0.0, 0
  for b in range(B):
    t = _logits(TEACHERS[IDS[b]], TOKENS[b:b + 1])[0]
    log_pt, log_ps = _np_log_softmax(t / T), _np_log_softmax(s[b] / T)
    per_token = T**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    total += per_token[MASK[b]].sum()
    count += MASK[b].sum()
  np.testing.assert_allclose(kd, total / count, rtol=1e-4)


def test_a_teacher_routed_no_example_does_not_change_loss_or_gradient():
  ids = np.array([0, 2, 0, 2, 2, 0], np.int32)  # teacher 1 routes nothing
  params = list(ROUTED.params)
  loss_a, grad_a = _loss_and_grad(STUDENT.params, tuple(params), ids)
  params[1] = _decoder(99, 8).params  # another teacher 1
  loss_b, grad_b = _loss_and_grad(STUDENT.params, tuple(params), ids)
  assert float(loss_a) == float(loss_b)
  jax.tree.map(np.testing.assert_array_equal, grad_a, grad_b)
  # ... while a teacher that is routed examples does change them.
  params[2] = _decoder(98, 16).params
  loss_c, _ = _loss_and_grad(STUDENT.params, tuple(params), ids)
  assert float(loss_c) != float(loss_a)


def test_bad_teacher_ids_fail_clearly():
  lm.check_teacher_ids(IDS, 3)
  with pytest.raises(ValueError, match=r"1 id\(s\) outside \[0, 2\) \(e.g. 2\).*0 to 1"):
    lm.check_teacher_ids(IDS, 2)
  with pytest.raises(ValueError, match=r"outside \[0, 3\) \(e.g. -1\)"):
    lm.check_teacher_ids(np.array([0, -1]), 3)
  with pytest.raises(ValueError, match="routes 3 examples of one batch to teacher 1, more than "
                                       "the routing capacity 2"):
    lm.check_teacher_ids(IDS, 3, capacity=2)
  with pytest.raises(ValueError, match=r"integers of shape \[batch\]"):
    lm.check_teacher_ids(IDS.astype(float), 3)
  teacher = lm.routed_teacher(TEACHERS)
  with pytest.raises(ValueError, match="teacher_input_key='routed_inputs'"):
    teacher.apply(teacher.params, teacher.model_state, TOKENS, train=False, rng=None)
  with pytest.raises(ValueError, match="capacity must be a positive integer"):
    lm.routed_teacher(TEACHERS, capacity=0)

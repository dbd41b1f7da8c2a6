"""kdjax.testing: a sound loss passes every check; broken losses are caught, each by its check.

The broken losses are the mistakes people make writing a distillation loss: gradient leaking
into the teacher, statistics over the batch inside a "per-example" loss, a cross-entropy where a
divergence was meant, logits used without the softmax's shift invariance, positions instead of
relations, math in bfloat16. Each is declared in a ``LossTestCase`` like a real loss, and the
kit's own test method must fail on it.
"""
import functools
import unittest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import testing

_rng = np.random.default_rng(0)
S = (2.0 * _rng.standard_normal((4, 5))).astype(np.float32)
T = (2.0 * _rng.standard_normal((4, 5))).astype(np.float32)


def good_kd(student, teacher, temperature=2.0):
  """A user's KD: float32 math, the teacher as a fixed target."""
  s = jnp.asarray(student).astype(jnp.float32) / temperature
  t = jax.lax.stop_gradient(jnp.asarray(teacher).astype(jnp.float32)) / temperature
  log_p_t = jax.nn.log_softmax(t)
  return temperature**2 * jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s)), -1)


def np_kd(student, teacher, temperature=2.0):
  def log_softmax(z):
    z = z / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lt, ls = log_softmax(teacher), log_softmax(student)
  return temperature**2 * np.sum(np.exp(lt) * (lt - ls), -1)


class GoodKDTest(testing.LossTestCase):
  loss_fn = staticmethod(good_kd)
  reference = staticmethod(np_kd)
  invariance = "logit_shift"
  stops_teacher_gradient = True

  def example_args(self):
    return S, T


def leaky_kd(student, teacher):
  s, t = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
  log_p_t = jax.nn.log_softmax(t)
  return jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s)), -1)


def batch_mixing_kd(student, teacher):  # normalises by the batch's mean loss
  rows = good_kd(student, teacher)
  return rows / jnp.mean(rows)


def soft_cross_entropy(student, teacher):  # H(p_t, p_s): not 0 at the teacher
  p_t = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(teacher, jnp.float32)))
  return -jnp.sum(p_t * jax.nn.log_softmax(jnp.asarray(student, jnp.float32)), -1)


def raw_logit_l1(student, teacher):  # not shift invariant
  return jnp.mean(jnp.abs(jnp.asarray(student, jnp.float32)
                          - jax.lax.stop_gradient(jnp.asarray(teacher, jnp.float32))), -1)


def positional_relation(student, teacher):  # batch-level, but weights examples by position
  w = jnp.arange(1.0, student.shape[0] + 1.0, dtype=jnp.float32)[:, None]
  s, t = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
  return jnp.sum(w * jnp.square(s - t))


def bf16_kd(student, teacher):  # computes in the input dtype
  log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(jnp.asarray(teacher)))
  return jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(jnp.asarray(student))), -1)


def _case(fn, **props):
  attrs = {"loss_fn": staticmethod(fn), "example_args": lambda self: (S, T), **props}
  return type("Case", (testing.LossTestCase,), attrs)


def _run(case_cls, method):
  result = unittest.TestResult()
  case_cls(method).run(result)
  assert not result.errors, result.errors
  return result


@pytest.mark.parametrize("fn, props, method", [
    (leaky_kd, {"stops_teacher_gradient": True}, "test_no_teacher_gradient"),
    (batch_mixing_kd, {}, "test_per_example"),
    (soft_cross_entropy, {}, "test_zero_at_teacher"),
    (raw_logit_l1, {"invariance": "logit_shift"}, "test_invariance"),
    (positional_relation, {"per_example": False, "divergence": True,
                           "invariance": "permutation"}, "test_invariance"),
    (bf16_kd, {}, "test_float32_math"),
    (leaky_kd, {"reference": staticmethod(np_kd)}, "test_reference"),  # no temperature
], ids=["teacher_gradient", "mixes_examples", "not_zero_at_teacher", "logit_shift",
        "permutation", "bfloat16_math", "reference"])
def test_the_kit_catches_a_broken_loss(fn, props, method):
  result = _run(_case(fn, **props), method)
  assert len(result.failures) == 1, (method, result.failures, result.skipped)


@pytest.mark.parametrize("method", ["test_no_teacher_gradient", "test_per_example",
                                    "test_zero_at_teacher", "test_invariance",
                                    "test_float32_math", "test_reference"])
def test_the_sound_loss_passes_the_same_checks(method):
  result = _run(GoodKDTest, method)
  assert not result.failures and not result.skipped, (result.failures, result.skipped)


def test_helpers_raise_with_a_message_naming_the_problem():
  with pytest.raises(AssertionError, match="leaks gradient into the teacher"):
    testing.assert_no_teacher_gradient(leaky_kd, (S, T))
  with pytest.raises(AssertionError, match=r"changing example \d changed the loss of examples"):
    testing.assert_per_example(batch_mixing_kd, (S, T))
  with pytest.raises(AssertionError, match="not 0, when the student equals the teacher"):
    testing.assert_zero_at_teacher(soft_cross_entropy, (S, T))
  with pytest.raises(AssertionError, match="returns \\[batch, ...\\]"):
    testing.assert_per_example(positional_relation, (S, T))


def test_undeclared_properties_are_skipped_not_passed():
  result = _run(_case(functools.partial(positional_relation), per_example=False,
                      divergence=True), "test_per_example")
  assert len(result.skipped) == 1 and not result.failures

"""Bad input is refused at trace time, with the shapes and keys it concerns, never used silently.

Masks of the wrong shape in terms, steps and metrics; missing batch keys; empty batches; inputs
of another shape than the example batch; temperatures no loss can use.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import lm, losses, objectives
from kdjax.models import Outputs
from tests import helpers

N = 8
OBJECTIVE = objectives.combine({"ce": (objectives.cross_entropy(), 0.5),
                                "kd": (objectives.kd(temperature=2.0), 0.5)})
MASK = np.array([True] * 6 + [False] * 2)


@pytest.fixture(scope="module")
def models_():
  return helpers.tap_mlp(1), helpers.tap_mlp(0, hidden=32)


@pytest.fixture(scope="module")
def state(models_):
  student, teacher = models_
  return _create(student, teacher)


def _create(student, teacher, objective=OBJECTIVE, batch=None):
  return kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                   tx=optax.sgd(0.1), rng=jax.random.key(0),
                                   example_batch=helpers.batch(N) if batch is None else batch)


def np_log_softmax(z):
  z = np.asarray(z, np.float64) - np.max(z, -1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


# Masks ------------------------------------------------------------------------------------------

def test_jitted_step_refuses_a_b_by_1_mask(state):
  with pytest.raises(ValueError, match=r"mask has shape \(8, 1\) for .* of shape \(8,\)"):
    jax.jit(kdjax.distill_step)(state, {**helpers.batch(N), "mask": MASK[:, None]})


def test_step_metrics_are_masked_means_and_refuse_wrong_masks():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((N, 5)).astype(np.float32)
  teacher = Outputs(jnp.asarray(rng.standard_normal((N, 5)).astype(np.float32)))
  labels = rng.integers(0, 5, N).astype(np.int32)
  metrics = kdjax.step.batch_metrics(logits, teacher, {"label": labels, "mask": MASK}, "label")
  pred = np.argmax(logits, -1)
  np.testing.assert_allclose(metrics["accuracy"], np.mean((pred == labels)[MASK]), rtol=1e-6)
  np.testing.assert_allclose(metrics["agreement"],
                             np.mean((pred == np.argmax(teacher.logits, -1))[MASK]), rtol=1e-6)
  for bad in (MASK[:, None], MASK[:4], np.ones((N, 3), bool)):
    with pytest.raises(ValueError, match=rf"mask has shape \({bad.shape[0]},"):
      kdjax.step.batch_metrics(logits, None, {"label": labels, "mask": bad}, "label")
  # Token logits [B, L, V]: a [B, L] mask, or a [B] mask per sequence.
  tokens = rng.standard_normal((2, 3, 5)).astype(np.float32)
  targets = np.argmax(tokens, -1).astype(np.int32)
  targets[1, 2] = (targets[1, 2] + 1) % 5
  tok_mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
  got = kdjax.step.batch_metrics(tokens, None, {"t": targets, "mask": tok_mask}, "t")
  assert float(got["accuracy"]) == 1.0  # the one wrong token is padding
  got = kdjax.step.batch_metrics(tokens, None, {"t": targets, "mask": np.array([1, 0])}, "t")
  assert float(got["accuracy"]) == 1.0
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1\)"):
    kdjax.step.batch_metrics(tokens, None, {"t": targets, "mask": tok_mask[:, :1]}, "t")


def test_eval_step_refuses_a_wrong_mask(state):
  with pytest.raises(ValueError, match=r"mask has shape \(8, 1\)"):
    kdjax.eval_step(state, {**helpers.batch(N), "mask": MASK[:, None]})


def test_objectives_masked_mean_is_the_losses_one_and_checks_shapes():
  assert objectives.masked_mean is losses.masked_mean
  values = np.arange(N, dtype=np.float32)
  np.testing.assert_allclose(objectives.masked_mean(values, {"mask": MASK}, "mask"),
                             np.mean(values[MASK]))
  np.testing.assert_allclose(objectives.masked_mean(values, {"label": values}, "mask"),
                             np.mean(values))
  with pytest.raises(ValueError, match=r"mask has shape \(8, 1\) for the values of shape \(8,\)"):
    objectives.masked_mean(values, {"mask": MASK[:, None]}, "mask")


def test_from_loss_on_token_logits_is_the_numpy_masked_token_mean():
  rng = np.random.default_rng(1)
  s = rng.standard_normal((2, 3, 4)).astype(np.float32)
  t = rng.standard_normal((2, 3, 4)).astype(np.float32)
  tok_mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
  s_bad = s.copy()
  s_bad[~tok_mask] = np.nan
  term = objectives.from_loss(losses.kd, temperature=2.0)
  loss, _, _ = term.apply({}, {}, Outputs(jnp.asarray(s_bad)), Outputs(jnp.asarray(t)),
                          {"mask": tok_mask}, jnp.int32(0))
  ls, lt = np_log_softmax(s / 2.0), np_log_softmax(t / 2.0)
  per_token = 4.0 * np.sum(np.exp(lt) * (lt - ls), -1)
  np.testing.assert_allclose(loss, per_token[tok_mask].mean(), rtol=1e-5)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
    term.apply({}, {}, Outputs(jnp.asarray(s)), Outputs(jnp.asarray(t)),
               {"mask": tok_mask[:, :2]}, jnp.int32(0))
  # A loss without a mask argument gets zeroed inputs and the same reduction.
  plain = objectives.from_loss(lambda a, b: jnp.sum((a - b)**2, -1))
  grad = jax.grad(lambda x: plain.apply({}, {}, Outputs(x), Outputs(jnp.asarray(t)),
                                        {"mask": tok_mask}, jnp.int32(0))[0])(jnp.asarray(s_bad))
  expected = 2 * (s - t) * tok_mask[..., None] / tok_mask.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_lm_terms_declare_the_batch_keys_and_taps_they_read():
  assert lm.token_cross_entropy_term().needs.batch == ("targets",)
  assert set(lm.cached_sparse_kd_term().needs.batch) == {lm.TOPK_VALUES_KEY,
                                                         lm.TOPK_INDICES_KEY}
  needs = lm.hidden_mse_term("blocks_{}", "blocks_{}", layer_map=((0, 1),)).needs
  assert needs.student == ("blocks_0",) and needs.teacher == ("blocks_1",)
  assert lm.token_kd_term().needs == objectives.Needs()


# Keys, empty batches and input shapes -----------------------------------------------------

def test_create_names_the_missing_key_and_what_the_batch_has(models_):
  student, teacher = models_
  batch = helpers.batch(N)
  del batch["label"]
  with pytest.raises(ValueError, match=r"reads batch key\(s\) \['label'\] but example_batch "
                                       r"has \['image', 'index'\]"):
    _create(student, teacher, batch=batch)
  dkd = objectives.dkd(label_key="y")
  with pytest.raises(ValueError, match=r"\['y'\]"):
    _create(student, teacher, objective=dkd)


def test_step_names_a_key_missing_from_a_later_batch(state):
  batch = helpers.batch(N)
  del batch["label"]
  with pytest.raises(ValueError, match=r"reads batch key\(s\) \['label'\] but the batch has"):
    jax.jit(kdjax.distill_step)(state, batch)


def test_empty_batches_are_refused(models_, state):
  student, teacher = models_
  empty = jax.tree.map(lambda a: a[:0], helpers.batch(N))
  with pytest.raises(ValueError, match="example_batch is empty"):
    _create(student, teacher, batch=empty)
  with pytest.raises(ValueError, match="the batch is empty"):
    kdjax.distill_step(state, empty)
  with pytest.raises(ValueError, match="the batch is empty"):
    kdjax.eval_step(state, empty)


def test_create_refuses_an_example_mask_of_another_shape(models_):
  student, teacher = models_
  with pytest.raises(ValueError, match=r"mask has shape \(8, 1\)"):
    _create(student, teacher, batch={**helpers.batch(N), "mask": MASK[:, None]})


def test_wrong_input_shape_is_reported_against_the_example_batch(state):
  assert state.input_shape == ((6,),)
  batch = {**helpers.batch(N), "image": np.zeros((N, 7), np.float32)}
  with pytest.raises(ValueError, match=r"the student expects inputs shaped \('batch', 6\) "
                                       r"\(from example_batch\), got \(8, 7\)"):
    jax.jit(kdjax.distill_step)(state, batch)
  with pytest.raises(ValueError, match="the student expects inputs shaped"):
    kdjax.eval_step(state, batch)
  # Another shape the student can run (it flattens [B, 2, 3] to [B, 6]) is not refused.
  reshaped = {**helpers.batch(N), "image": helpers.batch(N)["image"].reshape(N, 2, 3)}
  out = kdjax.eval_step(state, reshaped)
  np.testing.assert_array_equal(out["prediction"],
                                kdjax.eval_step(state, helpers.batch(N))["prediction"])


# Temperatures -------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, -4.0, float("inf")])
def test_term_factories_refuse_unusable_temperatures(temperature):
  for make in (lambda: objectives.kd(temperature=temperature),
               lambda: objectives.reverse_kd(temperature=temperature),
               lambda: objectives.dkd(temperature=temperature),
               lambda: objectives.from_loss(losses.jensen_shannon, temperature=temperature),
               lambda: lm.token_kd_term(temperature),
               lambda: lm.skew_kl_term(0.1, temperature=temperature),
               lambda: lm.sparse_kd_term(2, temperature=temperature),
               lambda: lm.cached_sparse_kd_term(temperature=temperature)):
    with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
      make()

"""ensemble_teacher: each combination mode against its formula; teachers frozen in distill_step."""
import chex
import jax
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives, strategies
from tests import helpers
from tests.strategies._np_ref import logits_of, softmax


def _teachers(n=3):
  return [helpers.tap_mlp(i, hidden=8 + 2 * i, taps=("pre_logits",)) for i in range(n)]


def _manual(zs, mode, weights=None):
  zs = np.stack(zs)  # [n, B, C]
  ps = softmax(zs)
  if mode == "mean_logits":
    return zs.mean(0)
  if mode == "mean_probs":
    return np.log(ps.mean(0))
  if mode == "weighted":
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return np.einsum("n,nbc->bc", w, zs)
  if mode == "max_prob":
    c = ps.max(-1)
    c = c / c.sum(0)
  else:  # neg_entropy
    neg_h = np.sum(ps * np.log(ps), -1)
    c = np.exp(neg_h) / np.exp(neg_h).sum(0)
  return np.einsum("nb,nbc->bc", c, zs)


@pytest.mark.parametrize("mode,kwargs", [
    ("mean_logits", {}),
    ("mean_probs", {}),
    ("weighted", {"weights": [3.0, 1.0, 0.0]}),
    ("max_prob", {"combine": "confidence", "confidence": "max_prob"}),
    ("neg_entropy", {"combine": "confidence", "confidence": "neg_entropy"}),
])
def test_combination_equals_the_manual_formula(mode, kwargs):
  teachers = _teachers()
  kwargs = {"combine": mode, **kwargs}
  ens = strategies.ensemble_teacher(teachers, **kwargs)
  x = helpers.batch(n=6)["image"] * 3.0  # spread out the teachers' confidences
  out, new_state = ens.apply(ens.params, ens.model_state, x, train=False, rng=None)
  zs = [logits_of(t, x) for t in teachers]
  expected = _manual(zs, mode, kwargs.get("weights"))
  np.testing.assert_allclose(out.logits, expected, rtol=1e-5, atol=1e-5)
  # The combination really depends on the mode (not, say, always the mean of logits).
  if mode != "mean_logits":
    assert np.abs(expected - np.mean(zs, 0)).max() > 1e-3
  # Per-teacher logits and taps are exposed under teacher_{i}/...
  assert set(out.features) == {f"teacher_{i}/{k}" for i in range(3) for k in ("logits", "pre_logits")}
  for i, z in enumerate(zs):
    np.testing.assert_allclose(out.features[f"teacher_{i}/logits"], z, rtol=1e-5, atol=1e-6)
  assert len(new_state) == 3
  assert ens.taps == tuple(f"teacher_{i}/{k}" for i in range(3) for k in ("pre_logits", "logits"))


def test_two_teacher_distill_step_runs_under_jit_and_teachers_stay_frozen():
  teachers = _teachers(2)
  ens = strategies.ensemble_teacher(teachers, combine="mean_probs")
  student = helpers.tap_mlp(5, hidden=8, taps=("pre_logits",))
  objective = objectives.combine({
      "ce": (objectives.cross_entropy(), 0.5),
      "kd": objectives.kd(temperature=2.0),
      # A feature term can read one particular teacher of the ensemble.
      "hint": (objectives.fitnets(student="pre_logits", teacher="teacher_1/pre_logits"), 0.1),
  })
  batch = helpers.batch(n=8)
  state = kdjax.DistillState.create(student=student, teacher=ens, objective=objective,
                                    tx=optax.sgd(0.05, momentum=0.9), rng=jax.random.key(0),
                                    example_batch=batch)
  assert isinstance(state.teacher_params, tuple) and len(state.teacher_params) == 2
  frozen = jax.tree.map(np.array, state.teacher_params)
  student_before = jax.tree.map(np.array, state.params["student"])
  step = jax.jit(chex.assert_max_traces(kdjax.distill_step, n=1))
  kd_losses = []
  for i in range(8):
    state, metrics = step(state, helpers.batch(n=8, seed=i % 2))
    kd_losses.append(float(metrics["kd"]))
  chex.assert_trees_all_equal(state.teacher_params, frozen)
  chex.assert_trees_all_equal(state.teacher_params[0], teachers[0].params)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                       state.params["student"], student_before))
  assert max(diffs) > 0
  assert {"agreement", "hint", "kd", "ce"} <= set(metrics)
  assert kd_losses[-1] < kd_losses[0]


def test_bad_arguments_name_the_fix():
  teachers = _teachers(2)
  with pytest.raises(ValueError, match="one weight per teacher"):
    strategies.ensemble_teacher(teachers, combine="weighted", weights=[1.0])
  with pytest.raises(ValueError, match="needs weights"):
    strategies.ensemble_teacher(teachers, combine="weighted")
  with pytest.raises(ValueError, match="only used with combine='weighted'"):
    strategies.ensemble_teacher(teachers, weights=[1.0, 1.0])
  with pytest.raises(ValueError, match="not one of"):
    strategies.ensemble_teacher(teachers, combine="median")
  mixed = strategies.ensemble_teacher([teachers[0], helpers.tap_mlp(3, num_classes=7)])
  with pytest.raises(ValueError, match="same num_classes"):
    mixed.apply(mixed.params, mixed.model_state, helpers.batch()["image"], train=False, rng=None)

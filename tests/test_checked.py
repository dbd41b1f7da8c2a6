"""kdjax.checked: run-time value checks that raise ValueError under jit, pmap and meshes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import losses, objectives, parallel, strategies
from tests import helpers

KD_CE = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                            "kd": (objectives.kd(temperature=4.0), 0.9)})
CLASSES = 5


def _state(tx=None, batch_norm=False, **kw):
  return kdjax.DistillState.create(
      student=helpers.tap_mlp(1, batch_norm=batch_norm), teacher=helpers.tap_mlp(0, hidden=32),
      objective=KD_CE, tx=tx or optax.sgd(0.1, momentum=0.9), rng=jax.random.key(0),
      example_batch=helpers.batch(), **kw)


def _with_label(batch, position, label):
  batch = dict(batch)
  batch["label"] = batch["label"].copy()
  batch["label"][position] = label
  return batch


@pytest.fixture(name="checked_step", scope="module")
def fixture_checked_step():
  return jax.jit(kdjax.checked(kdjax.distill_step))


@pytest.fixture(name="state", scope="module")
def fixture_state():
  return _state()  # Shared: the steps here never donate it.


@pytest.mark.parametrize("label", [-1, 99, CLASSES])
def test_label_out_of_range_raises_under_jit(checked_step, state, label):
  batch = _with_label(helpers.batch(), 3, label)
  with pytest.raises(ValueError, match=rf"batch\['label'\] holds the label {label} at flat "
                     rf"position 3 of shape \(8,\), outside \[0, {CLASSES}\)"):
    checked_step(state, batch)


def test_unchecked_step_silently_accepts_the_same_labels(state):
  # What the checks are for: -1 trains on another class, 99 gives no error at all.
  _, metrics = jax.jit(kdjax.distill_step)(state, _with_label(helpers.batch(), 3, -1))
  assert np.isfinite(metrics["loss"])
  jax.jit(kdjax.distill_step)(state, _with_label(helpers.batch(), 3, 99))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_raises(checked_step, state, value):
  batch = helpers.batch()
  batch["image"] = batch["image"].copy()
  batch["image"][6, 2] = value
  with pytest.raises(ValueError, match=r"batch\['image'\] holds a non-finite value .* example 6"):
    checked_step(state, batch)


def test_masked_out_examples_are_not_checked(checked_step, state):
  batch = _with_label(helpers.batch(), 2, -1)
  batch["mask"] = np.ones(8, np.float32)
  batch["mask"][2] = 0.0
  _, metrics = checked_step(state, batch)
  assert np.isfinite(metrics["loss"])
  batch["mask"][2], batch["mask"][4] = 1.0, 0.0  # The bad label is in a kept example again.
  with pytest.raises(ValueError, match="holds the label -1 at flat position 2"):
    checked_step(state, batch)


def test_valid_input_gives_the_plain_steps_state_and_metrics(checked_step):
  plain = jax.jit(kdjax.distill_step)
  s_plain = s_checked = _state(batch_norm=True)
  for i in range(2):
    s_plain, m_plain = plain(s_plain, helpers.batch(seed=i))
    s_checked, m_checked = checked_step(s_checked, helpers.batch(seed=i))
    assert isinstance(m_checked, dict) and set(m_checked) == set(m_plain)
    chex.assert_trees_all_equal(dict(m_checked), m_plain)
  chex.assert_trees_all_equal(s_checked, s_plain)


def test_called_directly_it_compiles_itself(state):
  step = kdjax.checked(kdjax.distill_step)
  assert kdjax.checked(step) is step
  new_state, metrics = step(state, helpers.batch())
  assert type(metrics) is dict and int(new_state.step) == 1 and np.isfinite(metrics["loss"])
  with pytest.raises(ValueError, match="label 99"):
    step(state, _with_label(helpers.batch(), 0, 99))


def test_non_finite_update_names_the_parameter():
  step = jax.jit(kdjax.checked(kdjax.distill_step))
  with pytest.raises(ValueError, match=r"the update made params\['student'\]"
                     r"\['head'\]\['bias'\] non-finite \(update 1\)"):
    step(_state(tx=optax.sgd(np.inf)), helpers.batch())


def test_failures_are_typed_not_read_from_the_message(state):
  from kdjax import _checked  # pylint: disable=g-import-not-at-top
  step = jax.jit(kdjax.checked(kdjax.distill_step))
  with pytest.raises(_checked.CheckFailed) as bad_label:
    step(state, _with_label(helpers.batch(), 0, 99))
  assert not isinstance(bad_label.value, _checked.NonFinite)
  assert str(bad_label.value) == f"checked step: {bad_label.value.detail}"
  assert bad_label.value.detail.startswith("batch['label'] holds the label 99")
  with pytest.raises(_checked.NonFinite) as diverged:
    step(_state(tx=optax.sgd(np.inf)), helpers.batch())
  assert isinstance(diverged.value, ValueError) and "non-finite" in diverged.value.detail


def _temperature_step(state, batch):
  """A step whose temperature is a traced value (as with a schedule)."""
  loss = jnp.mean(losses.kd(batch["student"], batch["teacher"], temperature=state["T"]))
  return state, {"loss": loss}


_checked_temperature_step = jax.jit(kdjax.checked(_temperature_step))


@pytest.mark.parametrize("temperature, message", [(0.0, "0.0"), (-4.0, "-4.0"), (np.inf, "inf")])
def test_traced_temperature_is_checked(temperature, message):
  rng = np.random.default_rng(0)
  batch = {"student": rng.standard_normal((4, 3)).astype(np.float32),
           "teacher": rng.standard_normal((4, 3)).astype(np.float32)}
  state = {"T": jnp.float32(temperature)}
  jax.jit(_temperature_step)(state, batch)  # Unchecked: no error, whatever the value.
  with pytest.raises(ValueError, match=f"the temperature is {message}; it must be finite and > 0"):
    _checked_temperature_step(state, batch)
  _, metrics = _checked_temperature_step({"T": jnp.float32(2.0)}, batch)
  np.testing.assert_allclose(
      metrics["loss"], jnp.mean(losses.kd(batch["student"], batch["teacher"], temperature=2.0)))


def test_eval_step_is_checked(state):
  step = jax.jit(kdjax.checked(kdjax.eval_step))
  out = step(state, helpers.batch())
  chex.assert_trees_all_equal(dict(out), jax.jit(kdjax.eval_step)(state, helpers.batch()))
  with pytest.raises(ValueError, match="label 7"):
    step(state, _with_label(helpers.batch(), 1, 7))


def test_mutual_step_is_checked():
  cohort = strategies.MutualState.create(
      [helpers.tap_mlp(1), helpers.tap_mlp(2)], optax.sgd(0.1), jax.random.key(0),
      helpers.batch())
  step = jax.jit(kdjax.checked(strategies.mutual_step))
  _, metrics = step(cohort, helpers.batch())
  chex.assert_trees_all_equal(dict(metrics),
                              jax.jit(strategies.mutual_step)(cohort, helpers.batch())[1])
  with pytest.raises(ValueError, match=rf"label 99 .* outside \[0, {CLASSES}\)"):
    step(cohort, _with_label(helpers.batch(), 5, 99))


def test_mesh_runner():
  plain = parallel.MeshRunner(parallel.make_mesh())
  runner = parallel.MeshRunner(parallel.make_mesh(), step_fn=kdjax.checked(kdjax.distill_step))
  s_plain, m_plain = plain.step(plain.put_state(_state()), helpers.batch())
  s_checked, m_checked = runner.step(runner.put_state(_state()), helpers.batch())
  chex.assert_trees_all_equal(jax.tree.leaves((s_checked, dict(m_checked))),
                              jax.tree.leaves((s_plain, m_plain)))
  with pytest.raises(ValueError, match="label -1 at flat position 7"):
    runner.step(s_checked, _with_label(helpers.batch(), 7, -1))


def test_pmap_runner():
  runner = parallel.PmapRunner(step_fn=kdjax.checked(kdjax.distill_step))
  plain = parallel.PmapRunner()
  s_checked, m_checked = runner.step(runner.put_state(_state()), helpers.batch())
  s_plain, m_plain = plain.step(plain.put_state(_state()), helpers.batch())
  chex.assert_trees_all_equal(dict(m_checked), m_plain)
  chex.assert_trees_all_equal(jax.tree.leaves(runner.host_state(s_checked)),
                              jax.tree.leaves(plain.host_state(s_plain)))
  # Each device sees one example; the message gives the position within that device's batch.
  with pytest.raises(ValueError, match=r"label 99 at flat position 0 of shape \(1,\)"):
    runner.step(s_checked, _with_label(helpers.batch(), 7, 99))


def test_not_a_step_is_refused():
  with pytest.raises(TypeError, match="step function"):
    kdjax.checked(3)
  with pytest.raises(TypeError, match="metrics dict"):
    jax.jit(kdjax.checked(lambda s, b: (s["x"], s["x"])))({"x": jnp.ones(2)}, helpers.batch())


def test_checked_steps_compose_inside_jit(state):
  # The error travels with the metrics the jitted function returns.
  step = kdjax.checked(kdjax.distill_step)

  @jax.jit
  def two_steps(state, b1, b2):
    state, _ = step(state, b1)
    return step(state, b2)

  with pytest.raises(ValueError, match="label 99"):
    two_steps(state, helpers.batch(), _with_label(helpers.batch(seed=1), 0, 99))

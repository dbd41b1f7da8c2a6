"""Gradual magnitude pruning: schedule, exact per-layer sparsity, N:M pattern, resume."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from kdjax import compress

SCHEDULE = dict(final_sparsity=0.8, initial_sparsity=0.1, begin_step=2, end_step=12, frequency=3)


def schedule_numpy(t, *, final_sparsity, initial_sparsity, begin_step, end_step, frequency):
  """Zhu & Gupta (2017), Eq. 1, held constant between the update steps t0 + k * dt."""
  if t < begin_step:
    return initial_sparsity
  if t >= end_step:
    return final_sparsity
  t_update = begin_step + ((t - begin_step) // frequency) * frequency
  return final_sparsity + (initial_sparsity - final_sparsity) * (
      1.0 - (t_update - begin_step) / (end_step - begin_step)) ** 3


def test_schedule_matches_closed_form():
  steps = jnp.arange(20)
  got = jax.vmap(lambda t: compress.polynomial_sparsity(t, **SCHEDULE))(steps)
  want = np.array([schedule_numpy(int(t), **SCHEDULE) for t in steps], np.float32)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  assert float(got[12]) == pytest.approx(0.8) and float(got[19]) == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [dict(final_sparsity=1.0), dict(initial_sparsity=0.9),
                                 dict(begin_step=20), dict(frequency=0)])
def test_schedule_rejects_bad_settings(bad):
  with pytest.raises(ValueError):
    compress.polynomial_sparsity(0, **{**SCHEDULE, **bad})


def make_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {
      "student": {
          "stem": {"kernel": jax.random.normal(k[0], (3, 3, 4, 8))},
          "stage1": {"kernel": jax.random.normal(k[1], (3, 3, 8, 8)),
                     "bias": jax.random.normal(k[2], (8,))},
          "head": {"kernel": jax.random.normal(k[3], (16, 4))},
      },
      "objective": {},
  }


def quadratic_grads(params, step):
  """Deterministic pseudo-gradients that differ per step."""
  return jax.tree.map(lambda w: 0.1 * w + 0.01 * jnp.sin(w * (step + 1.0)), params)


_STEPS = {}


def step_fn(tx):
  """One jitted update per transformation (compiled once, reused by every run)."""
  if tx not in _STEPS:
    @jax.jit
    def step(params, opt_state, t):
      updates, opt_state = tx.update(quadratic_grads(params, t), opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    _STEPS[tx] = step
  return _STEPS[tx]


def run(tx, params, steps, opt_state=None, start=0):
  """``steps`` updates from step ``start``; returns (params, opt_state, params after each)."""
  opt_state = tx.init(params) if opt_state is None else opt_state
  step, history = step_fn(tx), []
  for t in range(start, start + steps):
    params, opt_state = step(params, opt_state, jnp.float32(t))
    history.append(params)
  return params, opt_state, jax.tree.map(lambda *xs: np.stack(xs), *history)


KEEP = (r"student/head/.*",)


_TX = {}


def pruning_tx(**kw):
  key = tuple(sorted(kw.items()))
  if key not in _TX:
    _TX[key] = _pruning_tx(**kw)
  return _TX[key]


def _pruning_tx(**kw):
  return optax.chain(optax.sgd(0.1), compress.magnitude_pruning(
      SCHEDULE["final_sparsity"], initial_sparsity=SCHEDULE["initial_sparsity"],
      begin_step=SCHEDULE["begin_step"], end_step=SCHEDULE["end_step"],
      frequency=SCHEDULE["frequency"], keep_dense=KEEP, **kw))


def test_sparsity_follows_schedule_exactly_per_layer():
  params = make_params()
  _, opt_state, history = run(pruning_tx(), params, 16)
  for t in range(16):
    target = schedule_numpy(t, **SCHEDULE) if t >= SCHEDULE["begin_step"] else 0.0
    for name in ("stem", "stage1"):
      w = np.asarray(history["student"][name]["kernel"][t])
      assert np.sum(w == 0) == math.ceil(target * w.size - 1e-6 * w.size), (t, name)
    # Left dense: the keep_dense layer and every bias.
    assert np.all(np.asarray(history["student"]["head"]["kernel"][t]) != 0)
    assert np.all(np.asarray(history["student"]["stage1"]["bias"][t]) != 0)
  masks = compress.pruning_masks(opt_state)
  assert isinstance(masks["student"]["head"]["kernel"], optax.MaskedNode)
  final = np.asarray(masks["student"]["stage1"]["kernel"])
  assert final.dtype == np.bool_ and np.mean(~final) == pytest.approx(0.8, abs=1 / final.size)


def test_pruned_weights_stay_zero_and_masks_are_nested():
  _, _, history = run(pruning_tx(), make_params(), 16)
  w = np.asarray(history["student"]["stage1"]["kernel"])
  for t in range(1, 16):
    assert np.all(w[t][w[t - 1] == 0] == 0), t  # once pruned, always zero
  # Kept weights move as plain SGD would move them (up to XLA's fusion choices, one ulp).
  params = make_params()
  plain, _, _ = run(optax.sgd(0.1), params, 1)
  pruned, _, _ = run(pruning_tx(), params, 1)  # step 0 < begin_step: no pruning yet
  np.testing.assert_allclose(np.asarray(plain["student"]["stage1"]["kernel"]),
                             np.asarray(pruned["student"]["stage1"]["kernel"]), rtol=3e-7)


def test_prunes_the_smallest_magnitudes():
  w = jnp.arange(1.0, 17.0).reshape(4, 4) * jnp.array([[1.0, -1.0, 1.0, -1.0]])
  tx = compress.magnitude_pruning(0.5, begin_step=0, end_step=0, frequency=1)
  updates, _ = tx.update({"w": jnp.zeros_like(w)}, tx.init({"w": w}), {"w": w})
  new = np.asarray(w + updates["w"])
  np.testing.assert_array_equal(new != 0, np.abs(np.asarray(w)) > 8)


def test_two_four_pattern():
  params = make_params(1)
  tx = optax.chain(optax.sgd(0.1), compress.magnitude_pruning(
      structure="n:m", n=2, m=4, begin_step=1, keep_dense=KEEP))
  new, _, history = run(tx, params, 4)
  assert np.all(np.asarray(history["student"]["stem"]["kernel"][0]) != 0)  # before begin_step
  for name in ("stem", "stage1"):
    w = np.asarray(new["student"][name]["kernel"])  # [kh, kw, in, out]
    groups = np.moveaxis(w, 2, -1).reshape(-1, 4)  # groups of 4 consecutive input channels
    np.testing.assert_array_equal(np.sum(groups != 0, axis=-1), 2)
    # The kept two are the two largest magnitudes of the group at pruning time.
    w1 = np.moveaxis(np.asarray(history["student"][name]["kernel"][1]), 2, -1).reshape(-1, 4)
    np.testing.assert_array_equal(np.sort(np.argsort(-np.abs(w1), axis=-1)[:, :2], axis=-1),
                                  np.sort(np.argsort(-np.abs(groups), axis=-1)[:, :2], axis=-1))


def test_two_four_rejects_indivisible_layer():
  with pytest.raises(ValueError, match="keep_dense"):
    compress.magnitude_pruning(structure="n:m").init({"w": jnp.ones((6, 4))})


def test_errors():
  with pytest.raises(ValueError, match="no layer to prune"):
    compress.magnitude_pruning(keep_dense=(".*",)).init({"w": jnp.ones((4, 4))})
  tx = compress.magnitude_pruning()
  state = tx.init({"w": jnp.ones((4, 4))})
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((4, 4))}, state)
  with pytest.raises(ValueError, match="structure"):
    compress.magnitude_pruning(structure="blocks")
  with pytest.raises(ValueError, match="magnitude_pruning"):
    compress.pruning_masks(optax.sgd(0.1).init({"w": jnp.ones(2)}))


def test_exact_resume_through_orbax(tmp_path):
  params = make_params(2)
  tx = pruning_tx()
  full, full_state, _ = run(tx, params, 14)
  half, half_state, _ = run(tx, params, 7)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"params": half, "opt_state": half_state})
  ckpt.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        {"params": params, "opt_state": tx.init(params)})
  restored = ckpt.restore(tmp_path / "ckpt", target)
  resumed, resumed_state, _ = run(tx, restored["params"], 7, restored["opt_state"], start=7)
  jax.tree.map(np.testing.assert_array_equal, (full, full_state), (resumed, resumed_state))
  masks = compress.pruning_masks(resumed_state)
  np.testing.assert_array_equal(np.asarray(masks["student"]["stem"]["kernel"]),
                                np.asarray(full["student"]["stem"]["kernel"]) != 0)


def test_counts_and_report():
  params = {"a": {"kernel": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "bias": jnp.array([0.0, 3.0])},
            "b": {"kernel": jnp.array([[0.0, 0.0, 0.0], [0.0, 4.0, 5.0]])}}
  assert compress.count_params(params) == 12
  assert compress.count_nonzero(params) == 5
  report = compress.sparsity_report(params, keep_dense=("b/.*",))
  assert report["layers"]["a/kernel"] == {"params": 4, "nonzero": 2, "sparsity": 0.5}
  assert report["layers"]["b/kernel"]["sparsity"] == pytest.approx(4 / 6)
  assert "a/bias" not in report["layers"]
  assert report["sparsity"] == pytest.approx(7 / 12)
  assert report["pruned_sparsity"] == pytest.approx(0.5)  # only a/kernel is prunable

"""CRD: memory-bank updates, the two contrast losses against numpy, pmap/jit agreement, training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives
from kdjax.models import Outputs
from tests import helpers


def _outs(b, seed=0, ds=5, dt=7):
  rng = np.random.default_rng(seed)
  s = Outputs(jnp.zeros((b, 3), jnp.float32),
              {"pre_logits": jnp.asarray(rng.standard_normal((b, ds)), jnp.float32)})
  t = Outputs(jnp.zeros((b, 3), jnp.float32),
              {"pre_logits": jnp.asarray(rng.standard_normal((b, dt)), jnp.float32)})
  return s, t


def _embed(params, x):
  p = params["out"]
  v = np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("bank_dtype", [jnp.float32, jnp.bfloat16])
def test_bank_rows_follow_the_momentum_rule_and_others_stay(bank_dtype):
  n, d, momentum = 20, 4, 0.3
  term = objectives.crd(num_data=n, feat_dim=d, num_negatives=6, momentum=momentum,
                        bank_dtype=bank_dtype)
  s, t = _outs(4)
  batch = {"index": np.asarray([3, 7, 11, 0], np.int32)}
  params, state = term.init(jax.random.key(0), s, t, batch)
  loss, new_state, metrics = jax.jit(term.apply)(params, state, s, t, batch, jnp.int32(0))
  assert np.isfinite(float(loss))
  idx = batch["index"]
  rest = np.setdiff1d(np.arange(n), idx)
  tol = 1e-6 if bank_dtype == jnp.float32 else 1e-2
  for bank, v in (("memory_student", _embed(params["embed_student"], s.features["pre_logits"])),
                  ("memory_teacher", _embed(params["embed_teacher"], t.features["pre_logits"]))):
    old = np.asarray(state[bank].astype(jnp.float32), np.float64)
    new = np.asarray(new_state[bank].astype(jnp.float32), np.float64)
    assert new_state[bank].dtype == bank_dtype
    np.testing.assert_allclose(new[idx], _unit(momentum * old[idx] + (1 - momentum) * v),
                               atol=tol, rtol=tol)
    np.testing.assert_allclose(np.linalg.norm(new[idx], axis=-1), 1.0, atol=tol)
    np.testing.assert_array_equal(new[rest], old[rest])
    # The updated rows moved towards the new embeddings.
    assert np.all(np.sum(new[idx] * v, -1) > np.sum(_unit(old[idx]) * v, -1))
  # Padded examples (mask False) neither update the banks nor count in the loss.
  masked = {**batch, "mask": np.asarray([True, True, False, True])}
  _, masked_state, _ = jax.jit(term.apply)(params, state, s, t, masked, jnp.int32(0))
  np.testing.assert_array_equal(masked_state["memory_student"][11], state["memory_student"][11])
  assert not np.array_equal(masked_state["memory_student"][7], state["memory_student"][7])


def test_state_size_is_two_banks():
  n, d = 50, 8
  s, t = _outs(2)
  for dtype, itemsize in ((jnp.float32, 4), (jnp.bfloat16, 2)):
    term = objectives.crd(num_data=n, feat_dim=d, bank_dtype=dtype)
    _, state = term.init(jax.random.key(0), s, t, {"index": np.zeros(2, np.int32)})
    leaves = jax.tree.leaves(state)
    big = [x for x in leaves if x.size > 16]
    assert sum(x.size for x in big) == 2 * n * d
    assert sum(x.size * x.dtype.itemsize for x in leaves) <= 2 * n * d * itemsize + 64


@pytest.mark.parametrize("contrast", ["nce", "softmax"])
def test_loss_matches_numpy_with_two_examples(contrast):
  """With N = 2, K is capped at 1 and the one negative must be the other example."""
  T = 0.5
  term = objectives.crd(num_data=2, feat_dim=3, num_negatives=4096, nce_temperature=T,
                        contrast=contrast)
  s, t = _outs(2, seed=3)
  batch = {"index": np.asarray([1, 0], np.int32)}
  params, state = term.init(jax.random.key(2), s, t, batch)
  _, _, metrics = term.apply(params, state, s, t, batch, jnp.int32(5))
  v_s = _embed(params["embed_student"], s.features["pre_logits"])
  v_t = _embed(params["embed_teacher"], t.features["pre_logits"])
  m_s = np.asarray(state["memory_student"], np.float64)
  m_t = np.asarray(state["memory_teacher"], np.float64)
  order = np.asarray([[1, 0], [0, 1]])  # positive first, then the other row

  def expected(v, bank):
    scores = np.einsum("bkd,bd->bk", bank[order], v) / T
    if contrast == "softmax":
      return np.mean(np.log(np.exp(scores).sum(-1)) - scores[:, 0])
    log_z = np.log(np.mean(np.exp(scores))) + np.log(2)
    p = np.exp(scores - log_z)
    m_pn = 1 / 2  # K / N
    return np.mean(-np.log(p[:, 0] / (p[:, 0] + m_pn)) - np.log(m_pn / (p[:, 1] + m_pn)))

  np.testing.assert_allclose(metrics["student_loss"], expected(v_s, m_t), rtol=1e-5)
  np.testing.assert_allclose(metrics["teacher_loss"], expected(v_t, m_s), rtol=1e-5)


def test_z_is_estimated_once_then_held():
  term = objectives.crd(num_data=30, feat_dim=4, num_negatives=5)
  s, t = _outs(4)
  batch = {"index": np.arange(4, dtype=np.int32)}
  params, state = term.init(jax.random.key(0), s, t, batch)
  apply = term.apply
  _, state1, _ = apply(params, state, s, t, batch, jnp.int32(0))
  assert bool(state1["z_ready"]) and np.all(np.isfinite(state1["log_z"]))
  s2, t2 = _outs(4, seed=9)
  _, state2, _ = apply(params, state1, s2, t2, {"index": np.arange(4, 8, dtype=np.int32)},
                       jnp.int32(1))
  np.testing.assert_array_equal(state2["log_z"], state1["log_z"])


def test_pmap_gathers_so_replicas_match_jit():
  term = objectives.crd(num_data=16, feat_dim=4, num_negatives=5)
  s, t = _outs(4)
  batch = {"index": np.asarray([2, 9, 4, 13], np.int32)}
  params, state = term.init(jax.random.key(0), s, t, batch)
  loss, ref_state, _ = jax.jit(term.apply)(params, state, s, t, batch, jnp.int32(3))

  def split(x):
    return x.reshape(2, x.shape[0] // 2, *x.shape[1:])

  rep = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
  run = jax.pmap(lambda p, st, s, t, b: term.apply(p, st, s, t, b, jnp.int32(3), axis_name="d"),
                 axis_name="d", devices=jax.devices()[:2])
  losses, states, _ = run(rep(params), rep(state), jax.tree.map(split, s),
                          jax.tree.map(split, t), jax.tree.map(split, batch))
  np.testing.assert_allclose(np.mean(losses), loss, rtol=1e-5)
  for key in ("memory_student", "memory_teacher", "log_z"):
    np.testing.assert_array_equal(states[key][0], states[key][1])
    np.testing.assert_allclose(states[key][0], ref_state[key], rtol=1e-6, atol=1e-7)


def test_trains_down_in_distill_step():
  """Four batches of 16 over a 64-example set, 15 epochs: the epoch-mean loss falls."""
  n, b = 64, 16
  teacher = helpers.tap_mlp(10, hidden=12, taps=("pre_logits",))
  student = helpers.tap_mlp(20, hidden=8, taps=("pre_logits",))
  full = helpers.batch(n=n)
  data = [{k: v[i * b:(i + 1) * b] for k, v in full.items()} for i in range(n // b)]
  objective = objectives.combine({"crd": objectives.crd(num_data=n, feat_dim=8,
                                                        num_negatives=16)})
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(0.05, momentum=0.9), rng=jax.random.key(0),
                                    example_batch=data[0])
  step = jax.jit(kdjax.distill_step)
  losses = []
  for i in range(15 * len(data)):
    state, metrics = step(state, data[i % len(data)])
    losses.append(float(metrics["crd"]))
  assert np.all(np.isfinite(losses))
  epochs = np.asarray(losses).reshape(-1, len(data)).mean(1)
  assert epochs[-1] < 0.6 * epochs[0], epochs


def test_bad_arguments():
  with pytest.raises(ValueError, match="momentum"):
    objectives.crd(num_data=10, momentum=1.0)
  with pytest.raises(ValueError, match="contrast"):
    objectives.crd(num_data=10, contrast="triplet")
  term = objectives.crd(num_data=10, feat_dim=4)
  s, t = _outs(2)
  params, state = term.init(jax.random.key(0), s, t, {})
  with pytest.raises(ValueError, match="dataset index"):
    term.apply(params, state, s, t, {"label": np.zeros(2, np.int32)}, jnp.int32(0))

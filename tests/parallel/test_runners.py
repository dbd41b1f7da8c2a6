"""One step function, many placements: jit over 1 or 8 devices, pmap, FSDP, accumulation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import objectives, parallel
from tests import helpers

# Per-example terms and batch-level ones (RKD, DIST), so gathering under pmap is exercised.
OBJECTIVE = objectives.combine({
    "ce": (objectives.cross_entropy(), 0.1),
    "kd": (objectives.kd(temperature=4.0), 0.9),
    "rkd": (objectives.rkd(), 0.05),
    "dist": objectives.dist(),
})
BATCH = 16


def _state(batch_norm=False, bn_axis_name=None, accumulation_steps=1, objective=OBJECTIVE,
           teacher_hidden=32):
  taps = ("pre_logits",)
  teacher = helpers.tap_mlp(0, hidden=teacher_hidden, taps=taps, batch_norm=batch_norm,
                            bn_axis_name=bn_axis_name)
  student = helpers.tap_mlp(1, hidden=8, taps=taps, batch_norm=batch_norm,
                            bn_axis_name=bn_axis_name)
  return kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                   tx=optax.sgd(0.1, momentum=0.9), rng=jax.random.key(0),
                                   example_batch=helpers.batch(BATCH),
                                   accumulation_steps=accumulation_steps)


def _losses(runner, state, steps=4, batch_size=BATCH):
  state = runner.put_state(state)
  out = []
  for i in range(steps):
    state, metrics = runner.step(state, helpers.batch(batch_size, seed=i))
    out.append({k: float(v) for k, v in metrics.items()})
  return out, runner.host_state(state)


def _assert_same_losses(a, b, rtol=1e-4):
  assert len(a) == len(b)
  for ma, mb in zip(a, b):
    for k in ("loss", "ce", "kd", "rkd", "dist"):
      np.testing.assert_allclose(ma[k], mb[k], rtol=rtol, atol=1e-7, err_msg=k)


def _traced_step():
  return chex.assert_max_traces(kdjax.distill_step, n=1)


def test_jit_one_device_eight_devices_and_pmap_agree():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  # Each runner traces the step exactly once over its 4 steps (chex counts per call site, so
  # the counter is cleared before each runner is built).
  chex.clear_trace_counter()
  one = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:1]), step_fn=_traced_step())
  ref, ref_state = _losses(one, _state())
  for make in (lambda: parallel.MeshRunner(parallel.make_mesh(), step_fn=_traced_step()),
               lambda: parallel.PmapRunner(step_fn=_traced_step())):
    chex.clear_trace_counter()
    got, got_state = _losses(make(), _state())
    _assert_same_losses(ref, got)
    chex.assert_trees_all_close(got_state.params, ref_state.params, rtol=1e-4, atol=1e-6)


def test_batchnorm_statistics_agree_between_jit_and_pmap():
  jit_losses, jit_state = _losses(parallel.MeshRunner(parallel.make_mesh()),
                                  _state(batch_norm=True))
  pmap_losses, pmap_state = _losses(parallel.PmapRunner(),
                                    _state(batch_norm=True, bn_axis_name=parallel.PMAP_AXIS))
  _assert_same_losses(jit_losses, pmap_losses)
  chex.assert_trees_all_close(jit_state.student_state, pmap_state.student_state, rtol=1e-4,
                              atol=1e-6)


def test_eval_sums_agree_across_placements():
  def reduce_fn(out, batch):
    return {"correct": jnp.sum(out["correct"].astype(jnp.int32)),
            "agree": jnp.sum(out["agreement"].astype(jnp.int32))}

  state = _state()
  b = helpers.batch(BATCH, seed=7)
  sums = []
  for runner in (parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:1])),
                 parallel.MeshRunner(parallel.make_mesh()), parallel.PmapRunner()):
    sums.append({k: int(v) for k, v in runner.eval(runner.put_state(state), b, reduce_fn).items()})
  assert sums[0] == sums[1] == sums[2]
  s_pred = np.argmax(state.student_apply(state.params["student"], state.student_state, b["image"],
                                         train=False, rng=None)[0].logits, -1)
  assert sums[0]["correct"] == int(np.sum(s_pred == b["label"]))


def test_fsdp_shards_the_teacher_and_matches_unsharded():
  state = _state(teacher_hidden=256)
  runner = parallel.MeshRunner(parallel.make_mesh({"data": 2, "fsdp": 4}), shard_teacher=True)
  placed = runner.put_state(state)
  total = sum(x.nbytes for x in jax.tree.leaves(state.teacher_params))
  per_device = parallel.bytes_per_device(placed.teacher_params)
  assert len(per_device) == 8
  # Small leaves (biases, the head) stay replicated: allow that remainder.
  small = sum(x.nbytes for x in jax.tree.leaves(state.teacher_params) if x.size < 2**10)
  for b in per_device.values():
    assert b <= total / 4 + small, (b, total)
  assert max(per_device.values()) < 0.5 * total
  ref, _ = _losses(parallel.MeshRunner(parallel.make_mesh()), _state(teacher_hidden=256))
  got, _ = _losses(runner, state)
  _assert_same_losses(ref, got)


def test_fsdp_can_shard_the_student_too():
  runner = parallel.MeshRunner(parallel.make_mesh({"data": -1, "fsdp": 2}), shard_teacher=True,
                               shard_student=True)
  ref, ref_state = _losses(parallel.MeshRunner(parallel.make_mesh()), _state(teacher_hidden=256))
  got, got_state = _losses(runner, _state(teacher_hidden=256))
  _assert_same_losses(ref, got)
  chex.assert_trees_all_close(got_state.params, ref_state.params, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_matches_one_large_batch():
  per_example = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                    "kd": (objectives.kd(temperature=4.0), 0.9)})
  big_runner = parallel.MeshRunner(parallel.make_mesh())
  acc_runner = parallel.MeshRunner(parallel.make_mesh())
  big_state = big_runner.put_state(_state(objective=per_example))
  acc_state = acc_runner.put_state(_state(objective=per_example, accumulation_steps=4))
  for i in range(3):
    b = helpers.batch(4 * BATCH, seed=i)
    big_state, m_big = big_runner.step(big_state, b)
    acc_state, m_acc = acc_runner.step(acc_state, b)
    np.testing.assert_allclose(m_big["loss"], m_acc["loss"], rtol=1e-5)
  chex.assert_trees_all_close(acc_state.params, big_state.params, rtol=1e-5, atol=1e-6)


def test_batch_not_divisible_by_devices_names_the_fix():
  runner = parallel.MeshRunner(parallel.make_mesh())
  with pytest.raises(ValueError, match="divisible by the device count"):
    runner.step(runner.put_state(_state()), helpers.batch(12))


def test_mesh_errors_name_the_fix():
  with pytest.raises(ValueError, match="unknown mesh axes"):
    parallel.make_mesh({"tensor": 2})
  with pytest.raises(ValueError, match="not divisible"):
    parallel.make_mesh({"data": -1, "fsdp": 3})
  with pytest.raises(ValueError, match="needs parallel='jit'"):
    parallel.make_runner("pmap", mesh_shape={"data": -1, "fsdp": 2})


@pytest.mark.parametrize("devices", [1, 8])
def test_placing_a_state_never_lets_the_step_delete_the_callers_arrays(devices):
  # On one device the state already has the target placement; the placed copy is donated to
  # the step, and the caller's state must survive it (e.g. to place it on another runner).
  state = jax.device_put(_state(), jax.devices()[0])
  runner = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:devices]))
  placed, _ = runner.step(runner.put_state(state), helpers.batch(BATCH))
  assert int(placed.step) == 1
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
  np.testing.assert_array_equal(np.asarray(state.step), 0)


def test_fsdp_shards_crd_memory_banks_with_the_student():
  num_data = 64
  objective = objectives.combine({
      "ce": objectives.cross_entropy(),
      "crd": objectives.crd(num_data=num_data, feat_dim=32, num_negatives=8)})

  def banks(state):
    return [state.objective_state["crd"][k] for k in ("memory_student", "memory_teacher")]

  def run(runner):
    state = runner.put_state(_state(objective=objective))
    losses = []
    for i in range(3):
      b = helpers.batch(BATCH, seed=i)
      b["index"] = (b["index"] + BATCH * i).astype(np.int32)  # rows 0..47 of the banks
      state, metrics = runner.step(state, b)
      losses.append(float(metrics["crd"]))
    return losses, state

  ref_losses, ref_state = run(parallel.MeshRunner(parallel.make_mesh()))
  sharded = parallel.MeshRunner(parallel.make_mesh({"data": 2, "fsdp": 4}), shard_student=True)
  got_losses, got_state = run(sharded)
  bank_bytes = num_data * 32 * 4
  for bank in banks(got_state):
    assert bank.shape == (num_data, 32)
    assert max(parallel.bytes_per_device(bank).values()) == bank_bytes // 4
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
  for got, want in zip(banks(got_state), banks(ref_state)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)

"""Runners: the same ``distill_step`` placed on devices, with ``jit`` over a mesh or ``pmap``.

Both runners take and give *process-local* batches (each process passes the slice of the global
batch it loaded) and give back the global state and metrics, so the training loop is the same
for one CPU, eight GPUs or a multi-host slice.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import step as step_lib
from kdjax.parallel import _mesh

PMAP_AXIS = "batch"


def _check_batch(local_batch: Mapping[str, Any], n: int, what: str):
  sizes = {np.shape(v)[0] for v in jax.tree.leaves(local_batch)}
  if len(sizes) != 1:
    raise ValueError(f"batch entries have different leading sizes {sorted(sizes)}; every entry "
                     "needs the same batch axis")
  (b,) = sizes
  if b % n:
    raise ValueError(f"the per-process batch of {b} examples does not split over {n} {what}; "
                     f"choose config.batch_size divisible by the device count "
                     f"({n * jax.process_count()} in total)")


class MeshRunner:
  """``jax.jit`` over a mesh: batch sharded over the ``data`` and ``fsdp`` axes, state
  replicated (or FSDP), and with a ``model`` axis the parameters of both models split
  Megatron-style (attention heads, MLP hidden, vocabulary; :data:`kdjax.parallel.MODEL_RULES`).

  A runner compiles for the structure of the state it was last given (``put_state``); use one
  runner per kind of state (e.g. per training run).

  Args:
    mesh: from :func:`kdjax.parallel.make_mesh`.
    shard_teacher: shard the teacher's parameters over the ``fsdp`` axis.
    shard_student: shard the student's parameters, their optimizer state and the objective's
      state (memory banks such as CRD's, one row per training example) as well.
    step_fn: the step to run, ``step_fn(state, batch) -> (state, metrics)``; defaults to
      :func:`kdjax.distill_step`.
  """

  mode = "jit"

  def __init__(self, mesh: Mesh, *, shard_teacher: bool = False, shard_student: bool = False,
               step_fn: Callable = step_lib.distill_step,
               eval_fn: Callable = step_lib.eval_step):
    self.mesh = mesh
    self.shard_teacher = shard_teacher
    self.shard_student = shard_student
    self._step_fn = step_fn
    self._eval_fn = eval_fn
    self._batch_sharding = _mesh.batch_sharding(mesh)
    self._replicated = _mesh.replicated(mesh)
    self._compiled: dict[str, Callable] = {}
    self.state_sharding = None

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def sharding_rules(self) -> tuple[tuple[str, bool], ...]:
    """Path rules: the teacher's parameters with ``shard_teacher``; with ``shard_student`` the
    trained parameters, their optimizer state and the objective's state (memory banks), also
    those of each student of a :class:`kdjax.strategies.SeveralStudentsState`."""
    return ((r"^teacher_params(/|$)", self.shard_teacher),
            (r"^(students/\d+/)?(params|opt_states?|objective_state)(/|$)",
             self.shard_student))

  def _state_sharding(self, state):
    return _mesh.shardings_by_rules(state, self.mesh, self.sharding_rules())

  def put_state(self, state):
    """Places a host (or differently placed) state on the mesh."""
    sharding = self._state_sharding(state)
    if self.state_sharding is None or (jax.tree.structure(sharding) !=
                                       jax.tree.structure(self.state_sharding)):
      self._compiled.clear()  # A state of another structure needs its own compiled step.
      self.state_sharding = sharding
    return _mesh.place(state, self.state_sharding)

  def put_batch(self, local_batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's slice."""
    _check_batch(local_batch, max(1, _mesh.batch_shards(self.mesh) // jax.process_count()),
                 "batch shards (the mesh's data and fsdp devices)")
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(self._batch_sharding, np.asarray(v)),
        dict(local_batch))

  def _jit(self, name, fn, out_state: bool):
    if name not in self._compiled:
      if out_state:
        self._compiled[name] = jax.jit(
            fn, in_shardings=(self.state_sharding, self._batch_sharding),
            out_shardings=(self.state_sharding, self._replicated), donate_argnums=0)
      else:
        self._compiled[name] = jax.jit(
            fn, in_shardings=(self.state_sharding, self._batch_sharding),
            out_shardings=self._replicated)
    return self._compiled[name]

  @property
  def step_fn(self) -> Callable:
    return self._step_fn

  def with_step_fn(self, step_fn: Callable) -> "MeshRunner":
    """The same placement running another step function (e.g. ``kdjax.checked(step_fn)``)."""
    other = MeshRunner(self.mesh, shard_teacher=self.shard_teacher,
                       shard_student=self.shard_student, step_fn=step_fn, eval_fn=self._eval_fn)
    other.state_sharding = self.state_sharding
    return other

  def step(self, state, local_batch):
    """One update; returns the new (placed) state and the metrics (replicated arrays)."""
    return self._jit("step", self._step_fn, True)(state, self.put_batch(local_batch))

  def eval(self, state, local_batch, reduce_fn: Callable, *, eval_fn: Callable | None = None,
           gather: bool = False):
    """Runs ``reduce_fn(eval_fn(state, batch), batch)`` over the global batch, replicated.

    ``eval_fn`` defaults to the runner's (:func:`kdjax.eval_step`); ``reduce_fn`` returns sums,
    or with ``gather`` per-example arrays of the whole global batch (e.g. detections, for a
    metric computed on the host); under ``jit`` both are the same program.
    """
    del gather  # Under jit the outputs already cover the global batch.
    eval_fn = eval_fn or self._eval_fn
    fn = lambda s, b: reduce_fn(eval_fn(s, b), b)
    return self._jit(f"eval/{id(reduce_fn)}/{id(eval_fn)}", fn, False)(
        state, self.put_batch(local_batch))

  def host_state(self, state):
    """The state as global arrays, ready for checkpointing (already global under jit)."""
    return state


def _first_copy(x: jax.Array) -> jax.Array:
  """The first device's copy of a pmapped (replicated) array, read without a collective.

  ``x[0]`` on an array laid over all devices compiles a multi-device gather; many such eager
  programs dispatched at once can interleave their collectives on XLA:CPU's shared thread pool
  and deadlock. Reading one device's shard is a local copy.
  """
  return x.addressable_data(0)[0]


class PmapRunner:
  """``jax.pmap`` over the local devices with an ``axis_name``: the same step, per-device batches.

  Gradients, BatchNorm statistics and metrics are averaged over the axis; batch-level terms
  gather their inputs over it, so losses equal the ``jit`` runner's.
  """

  mode = "pmap"

  def __init__(self, *, step_fn: Callable = step_lib.distill_step,
               eval_fn: Callable = step_lib.eval_step):
    self._devices = jax.local_devices()
    self.step_fn = step_fn
    self._step = jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                          donate_argnums=0)
    self._eval_fn = eval_fn
    self._evals: dict[int, Callable] = {}
    # The sharding pmap gives its outputs: placing inputs the same way avoids retracing.
    self._sharding = NamedSharding(Mesh(np.asarray(self._devices), (PMAP_AXIS,)), P(PMAP_AXIS))

  @property
  def num_devices(self) -> int:
    return jax.device_count()

  def put_state(self, state):
    """One copy of the state per local device, stacked on a new leading axis."""
    n = len(self._devices)
    return jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state),
                          self._sharding)

  def put_batch(self, local_batch):
    n = len(self._devices)
    _check_batch(local_batch, n, "local devices")
    return jax.device_put(
        {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in local_batch.items()},
        self._sharding)

  def with_step_fn(self, step_fn: Callable) -> "PmapRunner":
    """The same placement running another step function (e.g. ``kdjax.checked(step_fn)``)."""
    return PmapRunner(step_fn=step_fn, eval_fn=self._eval_fn)

  def step(self, state, local_batch):
    state, metrics = self._step(state, self.put_batch(local_batch))
    return state, jax.tree.map(_first_copy, metrics)

  def eval(self, state, local_batch, reduce_fn: Callable, *, eval_fn: Callable | None = None,
           gather: bool = False):
    """As :meth:`MeshRunner.eval`: sums over the devices, or with ``gather`` the devices'
    per-example outputs concatenated in batch order."""
    eval_fn = eval_fn or self._eval_fn
    key = (id(reduce_fn), id(eval_fn), gather)
    if key not in self._evals:
      def fn(s, b):
        out = reduce_fn(eval_fn(s, b), b)
        if gather:
          return jax.lax.all_gather(out, PMAP_AXIS, tiled=True)
        return jax.lax.psum(out, PMAP_AXIS)
      self._evals[key] = jax.pmap(fn, axis_name=PMAP_AXIS)
    return jax.tree.map(_first_copy, self._evals[key](state, self.put_batch(local_batch)))

  def host_state(self, state):
    """One copy of the replicated state (device 0's), for checkpointing and export."""
    return jax.tree.map(_first_copy, state)


def make_runner(mode: str = "jit", *, mesh_shape: Mapping[str, int] | None = None,
                shard_teacher: bool = False, shard_student: bool = False,
                step_fn: Callable = step_lib.distill_step,
                eval_fn: Callable = step_lib.eval_step):
  """Builds the runner a config asks for (``config.parallel`` and ``config.mesh``)."""
  if mode == "jit":
    return MeshRunner(_mesh.make_mesh(mesh_shape), shard_teacher=shard_teacher,
                      shard_student=shard_student, step_fn=step_fn, eval_fn=eval_fn)
  if mode == "pmap":
    if mesh_shape and any(v not in (1, -1) for k, v in mesh_shape.items() if k != _mesh.DATA_AXIS):
      raise ValueError("parallel='pmap' is pure data parallelism; parameter sharding "
                       "(mesh fsdp > 1 or model > 1) needs parallel='jit'")
    return PmapRunner(step_fn=step_fn, eval_fn=eval_fn)
  raise ValueError(f"unknown parallel mode {mode!r}; use 'jit' (mesh, the default) or 'pmap'")

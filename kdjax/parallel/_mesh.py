"""Device meshes and the shardings kdjax places state and batches with."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)  # mesh order: the model axis varies fastest

# Megatron-style tensor parallelism over the ``model`` axis, by parameter path: (regex, the
# dimension to split). Column-parallel projections (attention heads, MLP hidden) split their
# output dimension, row-parallel ones their input dimension, embeddings and output heads the
# vocabulary. Paths are those of the zoo's decoder (``blocks_{i}/q_proj/kernel``, ``lm_head``)
# and ``transformer_lm`` (``qkv``, ``attn``, ``mlp_in``, ``mlp_out``, ``stem/token``, ``head``);
# any other parameter is replicated over ``model``.
MODEL_RULES: tuple[tuple[str, int], ...] = (
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|qkv|mlp_in)/kernel$", -1),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|qkv|mlp_in)/bias$", 0),
    (r"(o_proj|down_proj|/attn|mlp_out)/kernel$", 0),
    (r"(embed/embedding|stem/token/embedding)$", 0),
    (r"(^|/)lm_head$", -1),
    (r"(^|/)head/kernel$", -1),
    (r"(^|/)head/bias$", 0),
)


def make_mesh(axes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all, across processes) with named axes.

  Args:
    axes: axis name -> size; one size may be ``-1`` (the rest of the devices). Default
      ``{'data': -1}``. Use ``{'data': -1, 'fsdp': 4}`` to shard parameters four ways, and
      ``{'data': -1, 'model': 2}`` for tensor parallelism (:data:`MODEL_RULES`).
    devices: the devices to use; they are laid out in process-major order so that each process's
      devices hold a contiguous slice of the batch axis (the slice it loads).
  """
  axes = dict(axes or {DATA_AXIS: -1})
  unknown = set(axes) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; kdjax meshes have the axes "
                     f"{list(AXES)} (e.g. {{'data': -1, 'fsdp': 1, 'model': 1}})")
  devices = list(jax.devices() if devices is None else devices)
  devices.sort(key=lambda d: (d.process_index, d.id))
  n = len(devices)
  sizes = dict(axes)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {axes}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if n % known:
      raise ValueError(f"mesh {axes}: {n} devices are not divisible by {known}; choose axis "
                       "sizes whose product divides the device count")
    sizes[free[0]] = n // known
  if math.prod(sizes.values()) != n:
    raise ValueError(f"mesh {axes} needs {math.prod(sizes.values())} devices but {n} are "
                     "available; make the product of the axis sizes equal the device count or "
                     "set one axis to -1")
  sizes.setdefault(DATA_AXIS, 1)
  names = tuple(k for k in AXES if k in sizes)
  shape = tuple(sizes[k] for k in names)
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), names)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: every axis but ``model`` (FSDP is data parallel
  too; the devices of one ``model`` group see the same examples)."""
  return tuple(a for a in mesh.axis_names if a != MODEL_AXIS)


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of :func:`batch_axes`' sizes."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], n: int, min_size: int = 2**10) -> P:
  """Shards the largest dimension divisible by ``n``; small or indivisible arrays replicate."""
  if n <= 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % n == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def param_shardings(tree: Any, mesh: Mesh, *, shard: bool, min_size: int = 2**10) -> Any:
  """Shardings for a parameter tree: FSDP-sharded over the ``fsdp`` axis when ``shard``."""
  n = mesh.shape.get(FSDP_AXIS, 1) if shard else 1
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), n, min_size)), tree)


def tree_paths(tree: Any) -> Any:
  """The tree with each leaf replaced by its path, ``'/'``-joined (``'params/student/Dense_0/kernel'``)."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  return jax.tree_util.tree_map_with_path(lambda path, _: "/".join(name(e) for e in path), tree)


def model_dim(path: str, shape: Sequence[int], n: int) -> int | None:
  """The dimension :data:`MODEL_RULES` split over a ``model`` axis of size ``n`` (None: none)."""
  if n <= 1:
    return None
  for pattern, dim in _MODEL_RULES:
    if pattern.search(path):
      if not shape:
        return None
      dim = dim % len(shape)
      return dim if shape[dim] % n == 0 else None
  return None


def shardings_by_rules(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, bool]], *,
                       min_size: int = 2**10) -> Any:
  """Per-leaf shardings chosen by the first rule whose regex matches the leaf's path.

  A rule ``(pattern, shard)`` with ``shard=True`` splits the matching arrays over the ``fsdp``
  axis (their largest divisible dimension, :func:`fsdp_spec`); ``False`` and leaves no rule
  matches are replicated. Rules read paths, not field names, so any state tree is placed the
  same way (big_vision's sharding rules). With a ``model`` axis, every leaf whose path
  :data:`MODEL_RULES` matches (parameters and their optimizer moments alike, teacher and
  student) is split over it first; FSDP then takes the largest other divisible dimension.
  """
  compiled = [(re.compile(pattern), shard) for pattern, shard in rules]
  n = mesh.shape.get(FSDP_AXIS, 1)
  m = mesh.shape.get(MODEL_AXIS, 1)

  def one(path, x):
    shape = np.shape(x)
    shard = next((s for p, s in compiled if p.search(path)), False)
    tensor_dim = model_dim(path, shape, m)
    spec = [None] * len(shape)
    if tensor_dim is not None:
      spec[tensor_dim] = MODEL_AXIS
    if shard and n > 1 and math.prod(shape) >= min_size:
      free = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d])
              if d != tensor_dim and shape[d] % n == 0]
      if free:
        spec[free[0]] = FSDP_AXIS
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(one, tree_paths(tree), tree)


_MODEL_RULES = tuple((re.compile(pattern), dim) for pattern, dim in MODEL_RULES)


def place(tree: Any, shardings: Any) -> Any:
  """Puts ``tree`` on ``shardings``, across processes: the multi-host form of ``device_put``.

  ``jax.device_put`` only reaches this process's devices. Each leaf that every process holds in
  full (a numpy array, or a jax array on this process's devices) becomes one global array, each
  device taking its slice with ``jax.make_array_from_callback``; leaves that are already global
  arrays are resharded with ``device_put``. Typed PRNG keys travel as their key data. The result
  never aliases ``tree``'s buffers, so donating it leaves ``tree`` intact.
  """
  if jax.process_count() == 1:
    # Always a copy: the runners donate the placed state to the step, which must not delete the
    # caller's arrays. device_put alone may reuse an input buffer as one of the output's shards
    # (even with may_alias=False when replicating a single-device array), so copy first.
    fresh = jax.tree.map(lambda x: jnp.copy(x) if isinstance(x, jax.Array) else x, tree)
    return jax.device_put(fresh, shardings)

  def one(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(jnp.copy(x), sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = one(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(one, tree, shardings)


def bytes_per_device(tree: Any) -> dict[int, int]:
  """Bytes of ``tree``'s arrays resident on each device (by device id)."""
  out: dict[int, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
  return out

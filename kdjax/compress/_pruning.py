"""Gradual magnitude pruning as an optax transformation whose state holds the masks.

The masks live in the optimizer state, so pruning composes with any optimizer
(``optax.chain(optimizer, magnitude_pruning(...))``), shards and checkpoints with the rest of the
state, and a resumed run continues with exactly the masks it stopped with.
"""
from __future__ import annotations

import math
import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

STRUCTURES = ("unstructured", "n:m")


def polynomial_sparsity(step: jax.typing.ArrayLike, *, final_sparsity: float,
                        begin_step: int, end_step: int, frequency: int,
                        initial_sparsity: float = 0.0, power: int = 3) -> jax.Array:
  """The target sparsity at ``step`` under the schedule of Zhu & Gupta (2017).

  .. math::

    s_t = s_f + (s_i - s_f) \\left(1 - \\frac{t' - t_0}{t_e - t_0}\\right)^p,
    \\quad t' = \\min\\left(t_0 + \\Delta t \\left\\lfloor \\frac{t - t_0}{\\Delta t}
    \\right\\rfloor, t_e\\right)

  with ``t_0 = begin_step``, ``t_e = end_step`` (``= t_0 + n \\Delta t`` in the paper),
  ``\\Delta t = frequency`` and ``p = power`` (3 in the paper); ``t' = t_e`` for ``t >= t_e``.
  The sparsity changes only on the update steps ``t_0, t_0 + \\Delta t, ...`` and at ``t_e``
  (also when ``t_e - t_0`` is not a multiple of ``\\Delta t``), where it reaches ``s_f``;
  before ``t_0`` it is ``s_i`` and after ``t_e`` it stays ``s_f``.

  Args:
    step: scalar int, the number of updates applied so far.
    final_sparsity: ``s_f`` in ``[0, 1)``.
    begin_step, end_step: ``t_0 <= t_e``.
    frequency: ``\\Delta t >= 1``.
    initial_sparsity: ``s_i`` in ``[0, s_f]``.
    power: the exponent ``p``.

  Returns:
    A float32 scalar.

  References:
    Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", 2017 (Eq. 1).
  """
  _check_schedule(final_sparsity, initial_sparsity, begin_step, end_step, frequency)
  t = jnp.asarray(step, jnp.int32)
  t_update = begin_step + (jnp.maximum(t - begin_step, 0) // frequency) * frequency
  t_update = jnp.where(t >= end_step, end_step, jnp.minimum(t_update, end_step))
  span = max(end_step - begin_step, 1)
  progress = (t_update - begin_step).astype(jnp.float32) / np.float32(span)
  progress = jnp.where(end_step == begin_step, np.float32(1.0), progress)
  s = (np.float32(final_sparsity)
       + np.float32(initial_sparsity - final_sparsity) * (np.float32(1.0) - progress) ** power)
  return jnp.where(t < begin_step, np.float32(initial_sparsity), s)


def _check_schedule(final_sparsity, initial_sparsity, begin_step, end_step, frequency):
  if not 0.0 <= final_sparsity < 1.0:
    raise ValueError(f"sparsity={final_sparsity} must be in [0, 1) (the fraction of weights set "
                     "to zero in each pruned layer)")
  if not 0.0 <= initial_sparsity <= final_sparsity:
    raise ValueError(f"initial_sparsity={initial_sparsity} must be in [0, sparsity="
                     f"{final_sparsity}]")
  if not 0 <= begin_step <= end_step:
    raise ValueError(f"pruning begin_step={begin_step} and end_step={end_step} must satisfy "
                     "0 <= begin_step <= end_step")
  if int(frequency) < 1:
    raise ValueError(f"pruning frequency={frequency} must be >= 1 (steps between mask updates)")


class MagnitudePruningState(NamedTuple):
  """State of :func:`magnitude_pruning`.

  Attributes:
    count: int32 scalar, updates seen so far (the schedule's ``t``).
    masks: a pytree with the structure of the params: a bool array (True = kept) for every
      pruned leaf, ``optax.MaskedNode()`` for the leaves left dense.
  """

  count: jax.Array
  masks: PyTree


def param_path(path: Sequence[Any]) -> str:
  """A pytree key path as the ``'/'``-joined string the pruning patterns match.

  ``{'student': {'stage1': {'dense': {'kernel': ...}}}}`` gives ``'student/stage1/dense/kernel'``.
  """
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def prunable(path: str, leaf: Any, keep_dense: Sequence[str]) -> bool:
  """Whether the leaf at ``path`` is pruned: a weight matrix / conv kernel (ndim >= 2) whose path
  matches none of the ``keep_dense`` regular expressions (``re.fullmatch``). Biases, norm scales
  and other vectors always stay dense."""
  if getattr(leaf, "ndim", 0) < 2:
    return False
  return not any(re.fullmatch(p, path) for p in keep_dense)


def _nm_shape_error(path: str, shape, m: int) -> ValueError:
  return ValueError(
      f"N:M pruning groups {m} consecutive input features, but {path} has shape {tuple(shape)} "
      f"(input axis -2 of size {shape[-2]} is not a multiple of {m}); add a pattern matching "
      f"{path!r} to keep_dense, or use structure='unstructured'")


def _unstructured_mask(weights: jax.Array, alive: jax.Array, sparsity: jax.Array) -> jax.Array:
  """Keeps the ``size - ceil(sparsity * size)`` largest-magnitude entries among the alive ones."""
  n = weights.size
  magnitude = jnp.where(alive, jnp.abs(weights), -1.0).reshape(-1)  # dead weights stay dead
  # The fewest zeros that reach the target; the slack absorbs float32 rounding of the product,
  # so an exact product (0.8 x 1000) is not taken one weight further.
  n_prune = jnp.ceil(sparsity * np.float32(n) - np.float32(1e-6 * n)).astype(jnp.int32)
  order = jnp.argsort(magnitude, stable=True)  # ascending; ties broken by position
  rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return (rank >= n_prune).reshape(weights.shape)


def _nm_mask(weights: jax.Array, n: int, m: int) -> jax.Array:
  """Keeps the ``n`` largest-magnitude entries in each group of ``m`` along axis -2."""
  w = jnp.moveaxis(jnp.abs(weights), -2, -1)  # [..., out, in]
  groups = w.reshape(*w.shape[:-1], w.shape[-1] // m, m)
  order = jnp.argsort(-groups, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1)
  keep = (rank < n).reshape(w.shape)
  return jnp.moveaxis(keep, -1, -2)


def magnitude_pruning(sparsity: float = 0.8, *, begin_step: int = 0, end_step: int = 1000,
                      frequency: int = 100, initial_sparsity: float = 0.0, power: int = 3,
                      structure: str = "unstructured", n: int = 2, m: int = 4,
                      keep_dense: Sequence[str] = ()) -> optax.GradientTransformation:
  """Gradual magnitude pruning (Zhu & Gupta, 2017) as an optax transformation.

  Chain it after the optimizer: ``optax.chain(optax.adam(1e-3), magnitude_pruning(0.8, ...))``.
  On update ``t`` (``t = 0, 1, ...``) the transformation receives the optimizer's updates ``u``
  and the current params ``w`` and returns updates that give ``w' = mask ⊙ (w + u)``:
  kept weights move exactly as without pruning, pruned ones are set to, and stay at, zero.

  * ``structure='unstructured'``: on the update steps of :func:`polynomial_sparsity`
    (``begin_step + k * frequency <= end_step``, and ``end_step`` itself) each pruned layer's mask
    is recomputed so that exactly ``ceil(s_t * size)`` of its weights are zero (never below the
    target): the smallest-magnitude entries of ``w + u`` among the weights still alive (pruned
    weights never return, so the masks are nested).
  * ``structure='n:m'``: at ``begin_step`` each pruned layer keeps the ``n`` largest-magnitude
    weights of every group of ``m`` consecutive input features (axis -2: the input axis of Flax
    ``Dense`` ``[in, out]`` and ``Conv`` ``[kh, kw, in, out]`` kernels), the 2:4 pattern of
    sparse tensor cores for ``n=2, m=4``; the mask is fixed afterwards (sparsity ``1 - n/m``;
    ``sparsity`` and the schedule arguments other than ``begin_step`` are ignored).

  Pruned layers: every leaf with ``ndim >= 2`` whose ``'/'``-joined path (see
  :func:`param_path`; ``'student/stage1/dense/kernel'`` inside a ``DistillState``) matches none
  of ``keep_dense`` (regular expressions, full match). Biases and norm parameters stay dense.

  Args:
    sparsity: final sparsity ``s_f`` of each pruned layer, in ``[0, 1)``.
    begin_step, end_step, frequency, initial_sparsity, power: the schedule
      (:func:`polynomial_sparsity`).
    structure: ``'unstructured'`` or ``'n:m'``.
    n, m: the N:M pattern (``n < m``).
    keep_dense: regular expressions over parameter paths of layers left dense (e.g. the first
      and last layers: ``(r'student/stem/.*', r'student/head/.*', r'objective/.*')``).

  Returns:
    An ``optax.GradientTransformation`` whose state is :class:`MagnitudePruningState`; its
    ``update`` requires ``params``.

  References:
    Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", 2017. Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021 (2:4).
  """
  if structure not in STRUCTURES:
    raise ValueError(f"structure={structure!r} is not one of {STRUCTURES}")
  if structure == "n:m" and not 0 < n < m:
    raise ValueError(f"N:M pruning needs 0 < n < m, got n={n}, m={m}")
  _check_schedule(sparsity, initial_sparsity, begin_step, end_step, frequency)
  keep_dense = tuple(keep_dense)
  for pattern in keep_dense:
    re.compile(pattern)
  schedule = lambda t: polynomial_sparsity(
      t, final_sparsity=sparsity, begin_step=begin_step, end_step=end_step, frequency=frequency,
      initial_sparsity=initial_sparsity, power=power)

  def init_fn(params):
    def init_mask(path, leaf):
      name = param_path(path)
      if not prunable(name, leaf, keep_dense):
        return optax.MaskedNode()
      if structure == "n:m" and leaf.shape[-2] % m:
        raise _nm_shape_error(name, leaf.shape, m)
      return jnp.ones(leaf.shape, jnp.bool_)

    masks = jax.tree_util.tree_map_with_path(init_mask, params)
    if not any(isinstance(x, jax.Array) for x in jax.tree.leaves(masks)):
      raise ValueError("magnitude_pruning found no layer to prune: every weight matrix matches "
                       f"keep_dense={keep_dense}; loosen the patterns")
    return MagnitudePruningState(count=jnp.zeros((), jnp.int32), masks=masks)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("magnitude_pruning needs the params: call tx.update(updates, state, params)")
    t = state.count
    if structure == "unstructured":
      due = (t >= begin_step) & (t <= end_step) & (((t - begin_step) % frequency == 0)
                                                    | (t == end_step))
    else:
      due = t == begin_step
    s_t = schedule(t)

    def new_mask(mask, u, w):
      if isinstance(mask, optax.MaskedNode):
        return mask
      candidate = w + u
      if structure == "unstructured":
        fresh = _unstructured_mask(candidate, mask, s_t)
      else:
        fresh = _nm_mask(candidate, n, m)
      return jnp.where(due, fresh, mask)

    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    masks = jax.tree.map(new_mask, state.masks, updates, params, is_leaf=is_masked)

    def masked_update(mask, u, w):
      if isinstance(mask, optax.MaskedNode):
        return u
      return jnp.where(mask, u, -w)

    updates = jax.tree.map(masked_update, masks, updates, params, is_leaf=is_masked)
    return updates, MagnitudePruningState(count=t + 1, masks=masks)

  return optax.GradientTransformation(init_fn, update_fn)


def pruning_masks(opt_state: optax.OptState) -> PyTree:
  """The masks of the :func:`magnitude_pruning` inside ``opt_state`` (bool arrays, True = kept;
  ``optax.MaskedNode()`` for dense leaves).

  Raises:
    ValueError: ``opt_state`` holds no (or several) magnitude-pruning states.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, MagnitudePruningState)) if isinstance(x, MagnitudePruningState)]
  if len(found) != 1:
    raise ValueError(f"the optimizer state holds {len(found)} magnitude_pruning states, expected "
                     "1; build the optimizer with optax.chain(..., kdjax.compress.magnitude_pruning(...))")
  return found[0].masks


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """``params`` with the pruned entries set to zero (leaves without a mask unchanged)."""
  def apply(mask, w):
    return w if isinstance(mask, optax.MaskedNode) else jnp.where(mask, w, jnp.zeros_like(w))
  return jax.tree.map(apply, masks, params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def count_params(params: PyTree) -> int:
  """The number of scalars in ``params``."""
  return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params))


def count_nonzero(params: PyTree) -> int:
  """The number of non-zero scalars in ``params``."""
  return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(params))


def sparsity_report(params: PyTree, *, keep_dense: Sequence[str] = ()) -> dict[str, Any]:
  """Fractions of zero weights, per layer and in total.

  Args:
    params: a parameter pytree (e.g. ``state.params['student']``).
    keep_dense: the patterns the pruning used, so ``pruned_sparsity`` covers exactly the pruned
      layers (paths are relative to ``params``: pass ``'stem/.*'`` for ``params['student']``).

  Returns:
    ``{'layers': {path: {'params', 'nonzero', 'sparsity'}}`` for every leaf with ``ndim >= 2``,
    ``'params'`` and ``'nonzero'`` (counts over all of ``params``), ``'sparsity'`` (zeros over
    all parameters, biases and dense layers included) and ``'pruned_sparsity'`` (zeros over the
    prunable layers only, the number the pruning target refers to).
  """
  layers = {}
  pruned_total = pruned_zero = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = param_path(path)
    if np.ndim(leaf) < 2:
      continue
    size = math.prod(np.shape(leaf))
    nonzero = int(np.count_nonzero(np.asarray(leaf)))
    layers[name] = {"params": size, "nonzero": nonzero, "sparsity": 1.0 - nonzero / size}
    if prunable(name, leaf, tuple(keep_dense)):
      pruned_total += size
      pruned_zero += size - nonzero
  total, nonzero = count_params(params), count_nonzero(params)
  return {"layers": layers, "params": total, "nonzero": nonzero,
          "sparsity": 1.0 - nonzero / max(total, 1),
          "pruned_sparsity": pruned_zero / pruned_total if pruned_total else 0.0}

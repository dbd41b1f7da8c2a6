"""Assertion helpers for distillation losses: what every such loss should satisfy.

Each helper takes the loss ``fn`` and example positional ``args`` (student array first, teacher
array second by default; further arguments such as labels after them) and raises
``AssertionError`` with a message that says what broke and for which input. Keyword arguments
of the loss go in through ``functools.partial``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

LossFn = Callable[..., jax.Array]


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float64)


def _grads(fn: LossFn, args: Sequence[Any], argnums: Sequence[int]):
  return jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(argnums))(*args)


def assert_finite(fn: LossFn, args: Sequence[Any], *, argnums: Sequence[int] = (0,)) -> None:
  """The loss and its gradient with respect to ``args[argnums]`` are finite everywhere."""
  out = fn(*args)
  if not np.all(np.isfinite(_np(out))):
    raise AssertionError(f"the loss is not finite: {out}")
  for i, g in zip(argnums, _grads(fn, args, argnums)):
    if not np.all(np.isfinite(_np(g))):
      raise AssertionError(f"the gradient with respect to argument {i} is not finite")


def assert_per_example(fn: LossFn, args: Sequence[Any], *, argnums: Sequence[int] = (0, 1),
                       atol: float = 1e-6, examples: Sequence[int] | None = None) -> None:
  """Changing example ``j`` (row ``j`` of every ``args[argnums]``) changes only output row ``j``.

  The loss must return one value per example, shape ``[batch, ...]``. Examples that change row
  ``j`` of the output without mixing others pass; a loss that normalises over the batch, or
  leaks example ``j`` into another row, fails.
  """
  base = _np(fn(*args))
  batch = np.shape(args[argnums[0]])[0]
  if base.ndim < 1 or base.shape[0] != batch:
    raise AssertionError(f"a per-example loss returns [batch, ...] = [{batch}, ...] values, got "
                         f"shape {base.shape}; declare a batch-level loss as such")
  rng = np.random.default_rng(0)
  for j in (examples if examples is not None else sorted({0, batch - 1})):
    changed = list(args)
    for i in argnums:
      x = np.array(args[i], copy=True)
      if not _is_float(x):
        continue
      x[j] = x[j] + rng.standard_normal(x[j].shape).astype(x.dtype)
      changed[i] = x
    out = _np(fn(*changed))
    others = np.delete(np.abs(out - base), j, axis=0)
    if others.size and np.max(others) > atol:
      rows = sorted({int(r) for r in np.argwhere(others > atol)[:, 0]})
      rows = [r if r < j else r + 1 for r in rows]
      raise AssertionError(f"changing example {j} changed the loss of examples {rows} (by up to "
                           f"{np.max(others):.3g}); a per-example loss must not mix examples")


def assert_zero_at_teacher(fn: LossFn, args: Sequence[Any], *, student_argnum: int = 0,
                           teacher_argnum: int = 1, atol: float = 1e-5) -> None:
  """With the student's input equal to the teacher's, a divergence is 0 (within ``atol``)."""
  same = list(args)
  same[student_argnum] = args[teacher_argnum]
  out = _np(fn(*same))
  if np.max(np.abs(out)) > atol:
    raise AssertionError(f"the loss is {np.max(np.abs(out)):.3g}, not 0, when the student equals "
                         f"the teacher; a divergence vanishes at the teacher")


def assert_logit_shift_invariant(fn: LossFn, args: Sequence[Any], *,
                                 argnums: Sequence[int] = (0, 1), rtol: float = 1e-5,
                                 atol: float = 1e-6) -> None:
  """Adding a per-example constant to the logits (``args[argnums]``) leaves the loss unchanged
  (softmax losses: ``softmax(z + c) = softmax(z)``)."""
  base = _np(fn(*args))
  rng = np.random.default_rng(1)
  shifted = list(args)
  for i in argnums:
    x = np.asarray(args[i])
    shifted[i] = x + (5.0 * rng.standard_normal(x.shape[:-1] + (1,))).astype(x.dtype)
  np.testing.assert_allclose(_np(fn(*shifted)), base, rtol=rtol, atol=atol,
                             err_msg="the loss changed when a constant was added to each "
                             "example's logits")


def assert_permutation_equivariant(fn: LossFn, args: Sequence[Any], *,
                                   argnums: Sequence[int] = (0, 1), rtol: float = 1e-5,
                                   atol: float = 1e-6) -> None:
  """Permuting the batch (the same permutation for every ``args[argnums]``) permutes per-example
  values and leaves a batch-level (scalar) loss unchanged — relation losses depend on the set of
  examples, not their order."""
  base = _np(fn(*args))
  batch = np.shape(args[argnums[0]])[0]
  perm = np.random.default_rng(2).permutation(batch)
  if batch > 1 and np.all(perm == np.arange(batch)):
    perm = np.roll(perm, 1)
  permuted = list(args)
  for i in argnums:
    permuted[i] = np.asarray(args[i])[perm]
  expected = base if base.ndim == 0 else base[perm]
  np.testing.assert_allclose(_np(fn(*permuted)), expected, rtol=rtol, atol=atol,
                             err_msg="permuting the batch changed the loss beyond reordering")


def assert_no_teacher_gradient(fn: LossFn, args: Sequence[Any], *,
                               teacher_argnums: Sequence[int] = (1,)) -> None:
  """The gradient with respect to the teacher's inputs is exactly zero (``stop_gradient``).

  For losses meant to be used where the teacher's parameters are also being differentiated
  (e.g. online or mutual distillation): the teacher is a target, never pulled towards the
  student. kdjax's own losses leave the teacher differentiable, because ``distill_step`` already
  runs the teacher outside the gradient.
  """
  for i, g in zip(teacher_argnums, _grads(fn, args, teacher_argnums)):
    g = _np(g)
    if np.any(g != 0):
      raise AssertionError(f"the loss leaks gradient into the teacher (argument {i}): max "
                           f"|d loss / d teacher| = {np.max(np.abs(g)):.3g}; wrap the teacher's "
                           "input in jax.lax.stop_gradient")


def assert_float32_math(fn: LossFn, args: Sequence[Any], *, argnums: Sequence[int] = (0, 1),
                        rtol: float = 1e-5, atol: float = 1e-6) -> None:
  """bfloat16 inputs give a float32 result equal to the float32 computation on the same values."""
  low = list(args)
  upcast = list(args)
  for i in argnums:
    if _is_float(args[i]):
      low[i] = jnp.asarray(args[i]).astype(jnp.bfloat16)
      upcast[i] = low[i].astype(jnp.float32)
  out = fn(*low)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(_np(out), _np(fn(*upcast)), rtol=rtol, atol=atol,
                             err_msg="bfloat16 inputs were not computed in float32")


def assert_matches_reference(fn: LossFn, reference: Callable[..., Any], args: Sequence[Any], *,
                             rtol: float = 1e-4, atol: float = 1e-6) -> None:
  """The loss agrees with ``reference`` (e.g. a numpy transcription of the paper's formula),
  called on the same arguments as float64 numpy arrays."""
  ref_args = [_np(a) if _is_float(a) else np.asarray(a) for a in args]
  np.testing.assert_allclose(_np(fn(*args)), np.asarray(reference(*ref_args), np.float64),
                             rtol=rtol, atol=atol, err_msg="the loss differs from the reference")


def assert_gradients(fn: LossFn, args: Sequence[Any], *, argnums: Sequence[int] = (0,),
                     rtol: float = 1e-3, atol: float = 1e-4) -> None:
  """Reverse-mode gradients match finite differences (in float64, with x64 enabled)."""
  with jax.enable_x64(True):
    args64 = [np.float64(a) if _is_float(a) else a for a in args]
    float_pos = [i for i in argnums if _is_float(args[i])]

    def of_floats(*xs):
      full = list(args64)
      for i, x in zip(float_pos, xs):
        full[i] = x
      return jnp.sum(fn(*full))

    of_floats = jax.jit(of_floats)
    eps = 1e-6 if jnp.asarray(of_floats(*[args64[i] for i in float_pos])).dtype == jnp.float64 \
        else 1e-3
    check_grads(of_floats, tuple(args64[i] for i in float_pos), order=1, modes=["rev"], eps=eps,
                rtol=rtol, atol=atol)

"""Checked steps: run-time value checks for any step, raised as ``ValueError`` under jit and pmap.

Shapes and dtypes are checked when a step is traced; values (a label of 99 with 10 classes, a NaN
pixel, a scheduled temperature that reaches 0) exist only when the compiled program runs. A
label out of range does not fail on its own: ``take_along_axis`` clamps or fills it, and the loss
becomes NaN (99) or silently uses another class (-1). :func:`checked` adds the checks with
``jax.experimental.checkify``, so they run inside the same compiled program, and turns a failure
into a ``ValueError`` whose one-line message names the batch entry, the value and the fix.

How the error leaves the program: the checkified step returns its metrics as a pytree that also
carries checkify's error value. When JAX hands a compiled program's outputs back to Python (the
return of a ``jax.jit``, ``jax.pmap`` or :class:`kdjax.parallel.MeshRunner` call), it rebuilds
that pytree from concrete arrays; at that moment the error is read and raised. Without an error the
caller gets the metrics as a ``dict`` subclass with the same items as the unchecked step's (the
error value rides along as its ``error`` attribute, and as extra leaves for ``jax.tree``
functions). So the checked step is used wherever the plain one is; its metrics must be among
what the compiled function returns.

Cost: the checks are a few reductions per step, plus one device-to-host read of the error
flag per step, which ends the overlap of consecutive steps (measured in
``benchmarks/step_overhead.py --checked``). The run layer therefore checks only the first steps
of a run (``config.checked_steps``; 0 turns them off).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["CheckFailed", "NonFinite", "checked"]

_CHECKED_ATTR = "__kdjax_checked__"


class CheckFailed(ValueError):
  """A checked step found a value it cannot train on (a label out of range, a NaN input).

  ``str(error)`` is ``"checked step: <detail>"``; ``detail`` is the one-line description alone
  (what failed, where, and the fix).
  """

  def __init__(self, detail: str):
    super().__init__(f"checked step: {detail}")
    self.detail = detail


class NonFinite(CheckFailed):
  """The step's loss or a metric, or the parameters it updated, became NaN or infinite: with
  valid inputs this means the training diverged."""


# The checks of the step's own results (_check_output) fail as NonFinite; they begin so.
_DIVERGED = ("the step's ", "the update made ")


def checked(step_fn: Callable, *, num_classes: int | None = None) -> Callable:
  """Wraps a step with run-time checks of its values; failures raise ``ValueError``.

  Checked, in this order (the first failure is reported):

  * every floating entry of the batch is finite (examples with ``mask`` 0 are not checked);
  * integer labels (``batch[state.label_key]``, ``'label'`` by default) lie in
    ``[0, num_classes)``, ``num_classes`` being the size of the student's logits (masked-out
    positions are not checked);
  * inside the step, scheduled (traced) temperatures are finite and > 0 (the losses declare
    these checks; they cost nothing in an unchecked step);
  * the step's loss and scalar metrics are finite;
  * the updated trainable parameters (``new_state.params``) are finite, i.e. the gradients and
    the optimizer update were.

  The checked step has the plain step's signature and results: ``(state, batch, **kwargs) ->
  (state, metrics)`` for training steps (:func:`kdjax.distill_step`,
  :func:`kdjax.strategies.mutual_step`), ``(state, batch) -> dict`` for
  :func:`kdjax.eval_step`. It works inside ``jax.jit`` (with shardings and donation),
  ``jax.pmap`` (``axis_name`` passes through) and the :mod:`kdjax.parallel` runners; called
  outside of any transformation it compiles itself with ``jax.jit``.

  Args:
    step_fn: the step to check; its result must be a metrics dict or a tuple ending in one.
    num_classes: the label range; ``None`` reads it from the student's logits (states with a
      ``student_apply``, or a cohort's ``applies``). When neither is available only
      ``label >= 0`` is checked.

  Returns:
    The checked step. With valid input it returns the same state and metrics as ``step_fn``.

  Raises:
    CheckFailed: (a ``ValueError``, when the compiled step returns) with a one-line message
      naming the failed check; :class:`NonFinite` when the step's results are not finite.

  Examples:
    >>> step = jax.jit(kdjax.checked(kdjax.distill_step))  # doctest: +SKIP
    >>> state, metrics = step(state, {"image": x, "label": y})  # doctest: +SKIP
  """
  if not callable(step_fn):
    raise TypeError(f"checked() takes a step function, got {type(step_fn).__name__}")
  if getattr(step_fn, _CHECKED_ATTR, False):
    return step_fn
  jitted: dict[tuple, Callable] = {}

  def body(state, batch, kwargs):
    _check_batch(state, batch, num_classes)
    out = step_fn(state, batch, **kwargs)
    _check_output(out)
    return out

  @functools.wraps(step_fn)
  def checked_step(state, batch, **kwargs):
    if not _traced((state, batch)):
      key = tuple(sorted(kwargs.items()))
      if key not in jitted:
        jitted[key] = jax.jit(functools.partial(checked_step, **kwargs))
      return _plain(jitted[key](state, batch))
    error, out = checkify.checkify(
        functools.partial(body, kwargs=kwargs), errors=checkify.user_checks)(state, batch)
    return _attach(out, error)

  setattr(checked_step, _CHECKED_ATTR, True)
  return checked_step


def _traced(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _is_float(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _first_false(ok: jax.Array) -> jax.Array:
  """Flat index of the first ``False`` in ``ok`` (0 when all are ``True``)."""
  return jnp.argmin(ok.reshape(-1)).astype(jnp.int32)


def _unmasked(ok: jax.Array, mask: jax.Array | None) -> jax.Array:
  """``ok`` or masked out, when ``mask``'s shape is a prefix of ``ok``'s."""
  if mask is None or tuple(mask.shape) != tuple(ok.shape[:mask.ndim]):
    return ok
  invalid = jnp.logical_not(mask.astype(jnp.bool_))
  return jnp.logical_or(ok, invalid.reshape(*mask.shape, *([1] * (ok.ndim - mask.ndim))))


def student_num_classes(state: Any, batch: Mapping[str, Any]) -> int | None:
  """The size of the student's logits on ``batch``, from shapes only (``None`` if unknown)."""
  x = batch.get(getattr(state, "input_key", "image"))
  if x is None:
    return None
  if getattr(state, "student_apply", None) is not None and isinstance(state.params, Mapping):
    apply, params, model_state = state.student_apply, state.params["student"], state.student_state
  elif getattr(state, "applies", None):
    apply, params, model_state = state.applies[0], state.params[0], state.model_states[0]
  else:
    return None
  try:
    out, _ = jax.eval_shape(lambda p, s, x: apply(p, s, x, train=False, rng=None), params,
                            model_state, x)
  except Exception:  # pylint: disable=broad-except  # The step itself reports a bad model call.
    return None
  logits = getattr(out, "logits", None)
  return None if logits is None else int(logits.shape[-1])


def _check_batch(state, batch, num_classes):
  if not isinstance(batch, Mapping):
    return
  mask = batch.get("mask")
  mask = mask if mask is not None and hasattr(mask, "shape") else None
  for key in sorted(batch):
    x = batch[key]
    if key == "mask" or not _is_float(x) or x.ndim == 0:
      continue
    ok = _unmasked(jnp.isfinite(x), mask)
    per_example = jnp.all(ok.reshape(ok.shape[0], -1), axis=1)
    checkify.check(
        jnp.all(per_example),
        f"batch[{key!r}] holds a non-finite value (NaN or inf) in example {{i}}; clean the "
        "data (or mask that example out with batch['mask'])", i=_first_false(per_example))

  label_key = getattr(state, "label_key", "label")
  labels = batch.get(label_key)
  if labels is None or not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype,
                                                                        jnp.integer):
    return
  classes = num_classes if num_classes is not None else student_num_classes(state, batch)
  labels = labels.astype(jnp.int32)
  ok = labels >= 0
  if classes is not None:
    ok = jnp.logical_and(ok, labels < classes)
    allowed = f"outside [0, {classes}): the student predicts {classes} classes"
  else:
    allowed = "below 0: labels are class indices"
  ok = _unmasked(ok, mask)
  where = _first_false(ok)
  checkify.check(
      jnp.all(ok),
      f"batch[{label_key!r}] holds the label {{label}} at flat position {{i}} of shape "
      f"{tuple(labels.shape)}, {allowed}; fix the labels, give the models the dataset's "
      "num_classes, or mask padded positions out with batch['mask']",
      label=labels.reshape(-1)[where], i=where)


def _metrics_of(out) -> Mapping[str, Any] | None:
  if isinstance(out, Mapping):
    return out
  if isinstance(out, tuple) and out and isinstance(out[-1], Mapping):
    return out[-1]
  return None


def _check_output(out):
  metrics = _metrics_of(out)
  if metrics is None:
    raise TypeError("kdjax.checked needs a step that returns a metrics dict or a tuple ending "
                    f"in one (state, metrics); got {type(out).__name__}")
  new_state = out[0] if isinstance(out, tuple) and len(out) > 1 else None
  step = getattr(new_state, "step", None)
  at = "" if step is None else f" (update {{step}})"
  fmt = {} if step is None else {"step": step}
  names = sorted(k for k in metrics if k != "loss") + (["loss"] if "loss" in metrics else [])
  for name in names:
    _check_finite(metrics[name], f"the step's {name!r} is not finite{at}; with finite inputs and "
                  "labels in range this means the training diverged: ", fmt)
  params = getattr(new_state, "params", None)
  if params is None:
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    _check_finite(leaf, f"the update made params{jax.tree_util.keystr(path)} non-finite{at}: the "
                  "gradients or the optimizer's update were NaN or inf; ", fmt)


def _check_finite(value, cause: str, fmt: dict) -> None:
  """A checkify check that a float ``value`` is finite everywhere (other dtypes pass), failing
  with ``cause`` followed by the fix."""
  if _is_float(value):
    checkify.check(jnp.all(jnp.isfinite(value)),
                   f"{cause}lower the learning rate or clip gradients (optimizer.grad_clip_norm)",
                   **fmt)


def _attach(out, error):
  metrics = _CheckedMetrics(_metrics_of(out))
  metrics.error = error
  if isinstance(out, Mapping):
    return metrics
  return (*out[:-1], metrics)


def _plain(out):
  """The result with a plain metrics dict (once the error has been read)."""
  if isinstance(out, _CheckedMetrics):
    return dict(out)
  return (*out[:-1], dict(out[-1]))


class _CheckedMetrics(dict):
  """A metrics dict that carries checkify's error out of a compiled step (see module doc)."""

  error: Any = None


def _flatten_with_keys(m: _CheckedMetrics):
  keys = tuple(sorted(m))
  children = [(jax.tree_util.DictKey(k), m[k]) for k in keys]
  children.append((jax.tree_util.GetAttrKey("error"), m.error))
  return children, keys


def _flatten(m: _CheckedMetrics):
  keys = tuple(sorted(m))
  return (*(m[k] for k in keys), m.error), keys


def _unflatten(keys, children):
  *values, error = children
  if _concrete(error):
    _raise_if_failed(error)
  # Always the same type and structure: jit's fast path rebuilds outputs by their tree structure
  # and must get back what it flattened.
  metrics = _CheckedMetrics(zip(keys, values))
  metrics.error = error
  return metrics


jax.tree_util.register_pytree_with_keys(_CheckedMetrics, _flatten_with_keys, _unflatten,
                                        _flatten)


def _concrete(error) -> bool:
  if not isinstance(error, checkify.Error):
    return False
  leaves = jax.tree.leaves(error)
  return bool(leaves) and all(
      isinstance(x, (np.ndarray, np.generic, jax.Array)) and not isinstance(x, jax.core.Tracer)
      for x in leaves)


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    # Replicated (mesh) or per-device (pmap) outputs of a multi-process run: this process's
    # copies, stacked like a pmapped axis, so that any failing copy is reported.
    return np.stack([np.asarray(s.data) for s in x.addressable_shards])
  return np.asarray(x)


def _raise_if_failed(error: checkify.Error) -> None:
  leaves, treedef = jax.tree.flatten(error)
  host = jax.tree.unflatten(treedef, [_host(x) for x in leaves])
  exc = _earliest_failure(host)
  if exc is None:
    return
  text = str(exc).strip().splitlines()[0]
  text = re.sub(r"\s*\(`check` failed\)\s*$", "", text)
  raise (NonFinite if text.startswith(_DIVERGED) else CheckFailed)(text)


def _earliest_failure(error: checkify.Error):
  """The failed check that comes first in the step, over all mapped copies (pmap, processes).

  checkify reports a mapped error by the first device that failed, but a NaN loss averaged over
  devices fails on every device while its cause (a bad label) fails on one: the earliest check
  names the cause.
  """
  try:
    preds, codes, payloads, metadata = (error._pred, error._code, error._payload,  # pylint: disable=protected-access
                                        error._metadata)  # pylint: disable=protected-access
  except AttributeError:
    return error.get_exception()
  best = None
  for effect, pred in preds.items():
    pred, code = np.asarray(pred), np.asarray(codes[effect])
    for idx in zip(*np.nonzero(pred)) if pred.ndim else ([()] if pred else []):
      if best is None or int(code[idx]) < best[0]:
        best = (int(code[idx]), effect, idx)
  if best is None:
    return None
  code, effect, idx = best
  payload = jax.tree.map(lambda x: np.asarray(x)[idx], payloads[effect])
  return jax.tree.unflatten(metadata[code], payload)

"""Writing a model's inference function as serialized StableHLO (``jax.export``) and as ONNX
(jax2onnx)."""
from __future__ import annotations

import functools
import operator
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.extend.core  # noqa: F401  (Literal, for the jaxpr interpreter)
import jax.numpy as jnp
import numpy as np

from kdjax.compress._deps import require
from kdjax.models import Model

BATCH = "B"  # the name of the symbolic batch dimension in both formats
ONNX_OPSET = 21
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def inference_fn(model: Model, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 outputs: Sequence[str] = ()) -> Callable[[jax.Array], Any]:
  """``images -> logits``: the model in inference mode, its variables baked in as constants.

  ``images`` are what :func:`kdjax.data.make_eval_batches` yields as ``'image'`` (float32
  ``[B, H, W, C]`` in ``[0, 1]``, i.e. ``standardize=False``); when the model was trained on
  standardized inputs, pass the dataset's ``mean`` / ``std`` (``info.mean``, ``info.std``) and
  the standardization ``(x - mean) / std`` becomes part of the function, so the exported
  artifact takes raw images.

  ``outputs``: feature taps of ``model`` returned after the logits, e.g. ``('box_logits',)`` for
  a point detector, whose boxes need its second head (``model`` must tap them). The artifact
  then holds the raw heads; decoding them (peaks, boxes) stays outside it.

  Returns:
    A function from float32 ``[B, *input_shape]`` to float32 logits (``[B, num_classes]``, or
    ``[B, H, W, num_classes]`` for a dense model); with ``outputs``, a tuple of the logits and
    each tapped feature (float32).
  """
  if (mean is None) != (std is None):
    raise ValueError("pass both mean and std (the dataset's info.mean / info.std) or neither")
  outputs = tuple(outputs)
  missing = [name for name in outputs if name not in model.taps]
  if missing:
    raise ValueError(f"outputs {missing} are not taps of the model (it taps "
                     f"{list(model.taps)}); build it with taps={outputs}")
  shift = None if mean is None else np.asarray(mean, np.float32)
  scale = None if std is None else np.asarray(std, np.float32)
  params, model_state = model.params, model.model_state

  def fn(images):
    x = images
    if shift is not None:
      channels = (1,) * (x.ndim - 1) + (-1,)  # per-channel statistics, channels last
      x = (x - shift.reshape(channels)) / scale.reshape(channels)
    out, _ = model.apply(params, model_state, x, train=False, rng=None)
    logits = out.logits.astype(jnp.float32)
    if not outputs:
      return logits
    return (logits, *(out.features[name].astype(jnp.float32) for name in outputs))

  return fn


def input_spec(input_shape: Sequence[int], batch_size: int | None) -> jax.ShapeDtypeStruct:
  """float32 ``[B, *input_shape]``; ``B`` symbolic when ``batch_size`` is None."""
  if batch_size is None:
    batch = jax.export.symbolic_shape(BATCH)
  else:
    batch = (int(batch_size),)
  return jax.ShapeDtypeStruct((*batch, *tuple(input_shape)), jnp.float32)


def export_stablehlo(fn: Callable, input_shape: Sequence[int], path: str | os.PathLike, *,
                     batch_size: int | None = None,
                     platforms: Sequence[str] = ("cpu",)) -> pathlib.Path:
  """Serializes ``fn`` with :func:`jax.export.export` to ``path``.

  The file holds StableHLO plus its calling convention; reload it anywhere JAX runs, without
  kdjax: ``jax.export.deserialize(open(path, 'rb').read()).call(images)``.

  Args:
    fn: from :func:`inference_fn`.
    input_shape: one example's shape (``(8, 8, 1)``).
    path: the file to write.
    batch_size: None for a symbolic batch dimension (any batch size at run time), else fixed.
    platforms: the platforms the artifact can run on (``('cpu', 'cuda', 'tpu')``).

  Returns:
    ``path``.
  """
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      input_spec(input_shape, batch_size))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(exported.serialize())
  return path


def _load_onnx_plugins(jax2onnx) -> None:
  """jax2onnx's converters for JAX primitives only.

  :func:`export_onnx` hands jax2onnx a function made of JAX primitives (see
  :func:`_primitive_fn`), so the Flax / Equinox / dm-pix / example plugins, which take most of
  jax2onnx's first-call time, are not needed. Falls back to jax2onnx's full plugin import when
  its layout differs.
  """
  try:
    from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  if getattr(plugin_system, "_already_imported_plugins", True):
    return
  root = pathlib.Path(plugin_system.__file__).parent / "jax"
  import_tree = getattr(plugin_system, "_import_tree", None)
  if import_tree is None or not root.is_dir():
    return
  import_tree(root, "jax2onnx.plugins.jax")
  plugin_system._already_imported_plugins = True  # pylint: disable=protected-access
  del jax2onnx


def _is_int(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def _pool_max(x, params):
  """``reduce_window_max`` over the pooled axes only: the other axes (batch, channels) are merged
  into one leading axis, so ONNX gets a ``MaxPool`` over at most 2 spatial axes (jax2onnx maps
  every window axis, including size-1 ones, to a pooling axis, and onnxruntime's CPU ``MaxPool``
  takes at most 3)."""
  ndim = x.ndim
  pooled = [i for i in range(ndim)
            if params["window_dimensions"][i] != 1 or params["window_strides"][i] != 1
            or tuple(params["padding"][i]) != (0, 0) or params["base_dilation"][i] != 1
            or params["window_dilation"][i] != 1]
  rest = [i for i in range(ndim) if i not in pooled]
  if not rest or len(pooled) > 2:
    return jax.lax.reduce_window_max_p.bind(x, **params)
  perm = rest + pooled
  y = jnp.transpose(x, perm)
  lead = y.shape[:len(rest)]
  merged = functools.reduce(operator.mul, lead)
  y = y.reshape((merged, *y.shape[len(rest):]))
  pick = lambda key, one: (one, *(params[key][i] for i in pooled))
  out = jax.lax.reduce_window_max_p.bind(
      y, window_dimensions=pick("window_dimensions", 1), window_strides=pick("window_strides", 1),
      padding=((0, 0), *(tuple(params["padding"][i]) for i in pooled)),
      base_dilation=pick("base_dilation", 1), window_dilation=pick("window_dilation", 1))
  out = out.reshape((*lead, *out.shape[1:]))
  return jnp.transpose(out, np.argsort(perm))


def _eval_jaxpr(jaxpr, consts, *args):
  """Evaluates ``jaxpr`` with nested ``jit`` / ``custom_jvp`` / ``custom_vjp`` calls inlined and
  integer matmuls and convolutions computed in float32.

  onnxruntime's ``Gemm`` / ``MatMul`` / ``Conv`` take no int8 operands, so an int8 x int8 ->
  int32 product (a qwix PTQ layer) becomes Cast -> float32 product -> Cast; the integer weights
  stay int8 in the file. The result is exact while every partial sum stays below 2^24 in
  magnitude (127 * 127 * K < 2^24, i.e. contractions shorter than 1040 elements), and within
  float32 rounding beyond.
  """
  env = {}

  def read(v):
    return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in ("jit", "pjit"):
      sub = eqn.params["jaxpr"]
      outs = _eval_jaxpr(sub.jaxpr, sub.consts, *invals)
    elif name in ("custom_jvp_call", "custom_vjp_call") and "call_jaxpr" in eqn.params:
      sub = eqn.params["call_jaxpr"]
      outs = _eval_jaxpr(sub.jaxpr, sub.consts, *invals)
    elif name in ("dot_general", "conv_general_dilated") and any(_is_int(x) for x in invals):
      floats = [jnp.asarray(x).astype(jnp.float32) for x in invals]
      out = eqn.primitive.bind(*floats, **{**eqn.params, "preferred_element_type": jnp.float32})
      outs = [out.astype(eqn.outvars[0].aval.dtype)]
    elif (name == "convert_element_type" and jnp.issubdtype(eqn.params["new_dtype"], jnp.integer)
          and jnp.issubdtype(jnp.result_type(invals[0]), jnp.floating)):
      # XLA saturates out-of-range float -> int conversions (qwix's int8 rounding can reach 128);
      # ONNX's Cast does not define them, so the clamp is made explicit.
      info = jnp.iinfo(eqn.params["new_dtype"])
      x = jnp.clip(invals[0], float(info.min), float(info.max))
      outs = [eqn.primitive.bind(x, **eqn.params)]
    elif (name == "div" and jnp.issubdtype(jnp.result_type(invals[1]), jnp.floating)
          and eqn.invars[0].aval.shape == eqn.outvars[0].aval.shape
          and eqn.invars[1].aval.shape != eqn.outvars[0].aval.shape):
      # XLA rewrites a division by a broadcast divisor as a multiplication by its reciprocal;
      # doing the same keeps the rounding of quantized activations (x / scale) identical.
      a, b = invals
      reciprocal = jax.lax.div(jnp.ones_like(b), b)
      outs = [jax.lax.mul(a, jnp.broadcast_to(reciprocal, eqn.outvars[0].aval.shape))]
    elif name == "reduce_window_max" and invals[0].ndim > 3:
      outs = [_pool_max(invals[0], eqn.params)]
    else:
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _primitive_fn(fn: Callable, spec: jax.ShapeDtypeStruct) -> Callable:
  """``fn`` re-expressed as its jaxpr (traced here, once, for ``spec``), evaluated by
  :func:`_eval_jaxpr`.

  jax2onnx then converts JAX primitives only: integer products become float ones, max pools
  become ONNX-shaped, and its Flax-module plugins, which do not understand qwix's quantized
  parameters, never see the model. The result must be traced with this very ``spec`` (its
  symbolic batch dimension is the one the jaxpr's shapes refer to).
  """
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(spec)
  single = not isinstance(shapes, (tuple, list))  # One array, or a tuple of outputs.

  def primitive_fn(images):
    outs = _eval_jaxpr(closed.jaxpr, closed.consts, images)
    return outs[0] if single else tuple(outs)

  return primitive_fn


def export_onnx(fn: Callable, input_shape: Sequence[int], path: str | os.PathLike, *,
                batch_size: int | None = None, opset: int = ONNX_OPSET,
                model_name: str = "kdjax_model",
                output_names: Sequence[str] = (OUTPUT_NAME,)) -> pathlib.Path:
  """Converts ``fn`` to ONNX with jax2onnx and writes it to ``path``.

  Input ``'image'`` float32 ``[B, *input_shape]``, output ``'logits'`` float32
  ``[B, num_classes]`` (``[B, H, W, num_classes]`` for a dense model) followed by the tapped
  ``outputs`` of :func:`inference_fn`, named by ``output_names``; ``B`` is the symbolic
  dimension ``'B'`` when ``batch_size`` is None. Quantized weights are stored as int8
  initializers and dequantized in the graph.

  Args:
    fn: from :func:`inference_fn`.
    input_shape: one example's shape.
    path: the ``.onnx`` file to write.
    batch_size: None (symbolic) or a fixed batch size.
    opset: the ONNX opset (21 by default; see docs/deploy.md for the operators the zoo uses).
    model_name: the graph's name.
    output_names: one name per output of ``fn`` (``('logits', 'box_logits')`` for a detector
      exported with ``outputs=('box_logits',)``).

  Returns:
    ``path``.
  """
  jax2onnx = require("jax2onnx")
  onnx = require("onnx")
  _load_onnx_plugins(jax2onnx)
  spec = input_spec(input_shape, batch_size)
  proto = jax2onnx.to_onnx(_primitive_fn(fn, spec), inputs=[spec],
                           opset=opset, model_name=model_name, input_names=[INPUT_NAME],
                           output_names=list(output_names))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  onnx.save_model(proto, str(path))
  return path

"""Models by name: zoo names, registered names and ``"package.module:Attr"`` specs.

A model name given to :func:`create` (and to ``config.teacher.model`` / ``config.student.model``)
is one of:

* a zoo name (``"resnet32x4"``, see :func:`available_models`);
* a name registered with :func:`register` (``@kdjax.models.register("my_net")``);
* a spec ``"package.module:Attr"`` (``Attr`` may be dotted, ``"pkg.mod:Outer.Net"``), imported
  when first used.

The object behind a registered name or a spec is a Flax Linen module class, a Flax NNX module
class, or a function returning a :class:`~kdjax.models.Model` (or a Linen module instance).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models._base import Model, PyTree
from kdjax.models._linen import _mode_kwarg, from_linen
from kdjax.models._nnx import from_nnx
from kdjax.models.zoo import _registry

# Names registered with ``register``: name -> Linen class, NNX class or factory function.
_REGISTERED: dict[str, Any] = {}

_KINDS = ("a Flax Linen module class, a Flax NNX module class, or a function returning a "
          "kdjax.models.Model")


def available_models() -> list[str]:
  """The zoo's model names, sorted."""
  return sorted([*_registry.MODELS, *_registry.FACTORIES])


def registered_models() -> list[str]:
  """The names added with :func:`register`, sorted."""
  return sorted(_REGISTERED)


def register(name: str, model: Any = None) -> Any:
  """Makes ``model`` buildable by ``name`` (in :func:`create` and ``config.<side>.model``).

  Use as a decorator or a call::

    @kdjax.models.register("my_net")
    class MyNet(nn.Module):          # Linen, NNX, or a function returning a kdjax Model
      num_classes: int
      ...

    kdjax.models.register("other_net", OtherNet)

  Args:
    name: the name; it may not be a zoo name or contain ``':'`` (that form is a spec).
    model: a Flax Linen module class, a Flax NNX module class or a function returning a
      :class:`~kdjax.models.Model`; omitted: returns a decorator.

  Returns:
    ``model`` (or the decorator).

  Raises:
    ValueError: ``name`` is a zoo name, contains ``':'``, or is registered to another object.
    TypeError: ``model`` is none of the accepted kinds.
  """
  if not isinstance(name, str) or not name or ":" in name:
    raise ValueError(f"a registered model name is a non-empty string without ':' (that form is "
                     f"a 'package.module:Attr' spec), got {name!r}")
  if name in _registry.MODELS or name in _registry.FACTORIES:
    raise ValueError(f"{name!r} is a zoo model; register yours under another name")

  def add(obj: Any) -> Any:
    _kind(obj, f"register({name!r}, ...)")
    old = _REGISTERED.get(name)
    if old is not None and old is not obj and _qualname(old) != _qualname(obj):
      raise ValueError(f"model name {name!r} is already registered to {_qualname(old)}; choose "
                       "another name")
    _REGISTERED[name] = obj
    return obj

  return add if model is None else add(model)


def _qualname(obj: Any) -> str:
  return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _kind(obj: Any, what: str) -> str:
  """``'linen'``, ``'nnx'`` or ``'factory'``; TypeError naming ``what`` for anything else."""
  if isinstance(obj, type) and issubclass(obj, nn.Module):
    return "linen"
  if isinstance(obj, type) and issubclass(obj, nnx.Module):
    return "nnx"
  if callable(obj) and not isinstance(obj, type) and not isinstance(obj, (nn.Module,
                                                                          nnx.Module)):
    return "factory"
  raise TypeError(f"{what} is {_describe(obj)}, not a model: give {_KINDS}")


def _describe(obj: Any) -> str:
  if isinstance(obj, (nn.Module, nnx.Module)):
    return f"a {type(obj).__name__} instance (give the class, not an instance)"
  if isinstance(obj, type):
    return f"the class {obj.__name__}"
  kind = type(obj).__name__
  return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _import_spec(spec: str, key: str) -> Any:
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise ValueError(f"{key}={spec!r} is not a model spec; write 'package.module:ClassOrFactory'")
  try:
    obj = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    raise ValueError(f"{key}={spec!r}: cannot import module {module_name!r} ({e}); run from the "
                     "directory that holds it or add that directory to PYTHONPATH") from None
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's module
    first = str(e).splitlines()[0] if str(e) else ""
    raise ValueError(f"{key}={spec!r}: importing {module_name!r} failed "
                     f"({type(e).__name__}: {first}); fix that module") from None
  for i, part in enumerate(attr.split(".")):
    if not hasattr(obj, part):
      owner = ".".join([module_name, *attr.split(".")[:i]])
      public = [n for n in dir(obj) if not n.startswith("_")]
      close = difflib.get_close_matches(part, public, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"{key}={spec!r}: {owner} has no attribute {part!r}{hint}")
    obj = getattr(obj, part)
  return obj


def resolve_model(name: str, *, key: str = "model") -> tuple[str, Any]:
  """What a model name stands for: ``('zoo', constructor)`` or ``(kind, object)``.

  ``kind`` is ``'linen'``, ``'nnx'`` or ``'factory'``. Imports the module of a spec.

  Args:
    name: a zoo name, a registered name or ``"package.module:Attr"``.
    key: how errors name the setting (``"config.teacher.model"``).

  Raises:
    ValueError: an unknown name, a module that cannot be imported, a missing attribute or an
      object that is not a model; one line starting with ``key=name``.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"{key}={name!r}: name a kdjax zoo model, a registered model or "
                     "'package.module:ClassOrFactory'")
  if name in _registry.MODELS:
    return "zoo", _registry.MODELS[name]
  if name in _registry.FACTORIES:
    return "factory", _registry.FACTORIES[name]
  if name in _REGISTERED:
    obj = _REGISTERED[name]
  elif ":" in name:
    obj = _import_spec(name, key)
  else:
    known = available_models() + registered_models()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = f"unknown model {name!r}" if key == "model" else f"{key}={name!r} is not a kdjax model"
    registered = f" (registered: {', '.join(registered_models())})" if _REGISTERED else ""
    raise ValueError(f"{what}; available: {', '.join(available_models())}, a name registered "
                     f"with kdjax.models.register{registered}, or your own model as "
                     f"'package.module:ClassOrFactory'{hint}")
  try:
    return _kind(obj, f"{key}={name!r}"), obj
  except TypeError as e:
    raise ValueError(str(e)) from None


def check_model(name: str, *, key: str = "model") -> None:
  """Raises the one-line ``ValueError`` of :func:`resolve_model` for a name that is no model."""
  resolve_model(name, key=key)


def _fields(cls: type) -> set[str]:
  if dataclasses.is_dataclass(cls):
    return {f.name for f in dataclasses.fields(cls)}
  return set()


def _accepts(fn: Callable[..., Any]) -> tuple[set[str], bool]:
  """The keyword names ``fn`` takes, and whether it takes ``**kwargs``."""
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return set(), True
  names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  return names, any(p.kind == p.VAR_KEYWORD for p in params)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """The Linen module ``name`` stands for, constructed with ``kwargs`` (``num_classes``, ...).

  ``name`` is a zoo name, or a registered name or spec of a Linen module class (``num_classes``
  and ``dtype`` are passed only if the class has those fields).

  Raises:
    ValueError: unknown ``name`` (the message lists the available ones), or a model that is
      not a Linen module.
    TypeError: a keyword the module does not take.
  """
  kind, obj = resolve_model(name)
  if kind == "zoo":
    return obj(**kwargs)
  if kind != "linen":
    raise ValueError(f"model {name!r} is not a Flax Linen module; get_model returns Linen modules "
                     "only (use kdjax.models.create for NNX modules and factories)")
  return obj(**_linen_kwargs(obj, name, kwargs))


def _linen_kwargs(cls: type, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  fields = _fields(cls)
  kwargs = dict(kwargs)
  if "num_classes" not in fields:
    kwargs.pop("num_classes", None)
  if "dtype" not in fields:
    dtype = kwargs.pop("dtype", None)
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
      raise TypeError(f"model {name!r} has no dtype field, so it cannot compute in "
                      f"{jnp.dtype(dtype).name}; leave the dtype float32 or add a dtype field")
  return kwargs


def create(name: str, *, num_classes: int, input_shape: Sequence[int], rng: jax.Array,
           taps: Sequence[str] = (), dtype: Any = jnp.float32, **kwargs: Any) -> Model:
  """Builds model ``name``, initialises it from ``rng`` and wraps it in the kdjax protocol.

  Args:
    name: a zoo name from :func:`available_models`, a name added with :func:`register`, or
      ``"package.module:Attr"`` naming a Flax Linen module class, a Flax NNX module class or a
      function returning a :class:`~kdjax.models.Model`. A Linen class gets ``num_classes`` and
      ``dtype`` if it has those fields; an NNX class gets ``num_classes``, ``dtype`` and
      ``rngs=nnx.Rngs(rng)`` if its ``__init__`` takes them; a function gets whichever of
      ``num_classes``, ``input_shape``, ``rng``, ``taps`` and ``dtype`` it takes. ``kwargs`` go
      to all three.
    num_classes: output classes (for ``transformer_lm``: the vocabulary size).
    input_shape: one example's shape, without the batch axis: ``(32, 32, 3)`` for CIFAR images,
      ``(length,)`` for token sequences.
    rng: the initialisation key.
    taps: feature paths to return (checked now; see :func:`from_linen`).
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32 and
      logits are float32 either way for zoo models.
    **kwargs: further module arguments (``hidden=(256, 256)`` for ``mlp``, ``width_mult`` for
      ``mobilenetv2``, ``n_layers`` for ``transformer_lm``, ...). Every zoo model takes
      ``bn_axis_name``: under ``pmap``, the mapped axis name, so BatchNorm uses global batch
      statistics.

  Returns:
    A :class:`~kdjax.models.Model` named ``name``.

  Raises:
    ValueError: an unknown name or a spec that does not resolve to a model (one line, see
      :func:`resolve_model`); a model whose logits do not have ``num_classes`` entries.
    TypeError: a keyword argument the model does not take.

  Example::

    teacher = kdjax.models.create("resnet32x4", num_classes=100, input_shape=(32, 32, 3),
                                  rng=jax.random.key(0), taps=("stage3", "pre_logits"))
    mine = kdjax.models.create("my_project.nets:MyNet", num_classes=10,
                               input_shape=(28, 28, 1), rng=jax.random.key(0))
  """
  kind, obj = resolve_model(name)
  input_dtype = _registry.INPUT_DTYPES.get(name, jnp.float32)
  example = jnp.zeros((1, *tuple(input_shape)), input_dtype)
  example_spec = jax.ShapeDtypeStruct(example.shape, example.dtype)
  if kind == "zoo":
    module = obj(num_classes=num_classes, dtype=dtype, **kwargs)
    variables = jax.jit(functools.partial(module.init, train=False))(rng, example)
    return from_linen(module, variables, taps=taps, name=name, example_input=example_spec)
  if kind == "linen":
    model = _init_linen(obj(**_linen_kwargs(obj, name, {"num_classes": num_classes,
                                                         "dtype": dtype, **kwargs})),
                        name, rng, example, taps)
  elif kind == "nnx":
    model = _init_nnx(obj, name, rng, example_spec, taps, num_classes, dtype, kwargs)
  else:
    model = _from_factory(obj, name, rng, tuple(input_shape), taps, num_classes, dtype, kwargs)
  _check_classes(model, name, example_spec, num_classes)
  return model


def _init_linen(module: nn.Module, name: str, rng: jax.Array, example: jax.Array,
                taps: Sequence[str]) -> Model:
  mode = _mode_kwarg(module, None)
  mode_kwargs = {"train": False} if mode == "train" else (
      {"deterministic": True} if mode == "deterministic" else {})
  variables = jax.jit(functools.partial(module.init, **mode_kwargs))(rng, example)
  variables = {k: v for k, v in variables.items() if k != "intermediates"}
  return from_linen(module, variables, taps=taps, name=name,
                    example_input=jax.ShapeDtypeStruct(example.shape, example.dtype))


def _init_nnx(cls: type, name: str, rng: jax.Array, example: jax.ShapeDtypeStruct,
              taps: Sequence[str], num_classes: int, dtype: Any, kwargs: dict[str, Any]) -> Model:
  accepted, var_kw = _accepts(cls.__init__)
  extra = {"num_classes": num_classes, "rngs": nnx.Rngs(rng)}
  if jnp.dtype(dtype) != jnp.float32 or "dtype" in accepted:
    extra["dtype"] = dtype
  args = {k: v for k, v in extra.items() if var_kw or k in accepted}
  if "dtype" in extra and "dtype" not in args:
    raise TypeError(f"model {name!r} takes no dtype argument, so it cannot compute in "
                    f"{jnp.dtype(dtype).name}; leave the dtype float32 or add a dtype argument")
  return from_nnx(cls(**kwargs, **args), taps=taps, name=name, example_input=example)


def _from_factory(fn: Callable[..., Any], name: str, rng: jax.Array,
                  input_shape: tuple[int, ...], taps: Sequence[str], num_classes: int,
                  dtype: Any, kwargs: dict[str, Any]) -> Model:
  accepted, var_kw = _accepts(fn)
  offered = {"num_classes": num_classes, "input_shape": input_shape, "rng": rng,
             "taps": tuple(taps), "dtype": dtype}
  args = {k: v for k, v in offered.items() if var_kw or k in accepted}
  made = fn(**kwargs, **args)
  if isinstance(made, nn.Module):
    return _init_linen(made, name, rng, jnp.zeros((1, *input_shape), jnp.float32), taps)
  if not isinstance(made, Model):
    raise ValueError(f"model {name!r}: the function returned {_describe(made)}; it must return "
                     "a kdjax.models.Model (kdjax.models.from_linen / from_nnx / from_apply_fn)")
  if tuple(taps) and tuple(made.taps) != tuple(taps):
    raise ValueError(f"model {name!r} was asked for taps {tuple(taps)} but the function returned "
                     f"a model tapping {tuple(made.taps)}; give the function a taps argument")
  if not made.name:
    made = dataclasses.replace(made, name=name)
  return made


def _check_classes(model: Model, name: str, example: jax.ShapeDtypeStruct,
                   num_classes: int) -> None:
  out, _ = jax.eval_shape(functools.partial(model.apply, train=False, rng=None), model.params,
                          model.model_state, example)
  classes = out.logits.shape[-1] if out.logits.ndim else None
  if classes != num_classes:
    raise ValueError(f"model {name!r} returns logits of shape {tuple(out.logits.shape)} for one "
                     f"example, not {num_classes} classes; make its output size num_classes "
                     "(a num_classes field or argument receives it)")


def param_count(params: PyTree) -> int:
  """The number of scalars in ``params`` (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
  return sum(math.prod(leaf.shape) if hasattr(leaf, "shape") else 1
             for leaf in jax.tree.leaves(params))

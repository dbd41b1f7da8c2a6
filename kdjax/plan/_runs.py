"""The plan's one contact with the run layer: every run of a config, shape-only, placed.

Everything ``kdjax.plan`` knows about how ``kdjax.train`` builds runs lives here. The runs come
from the run layer's own declarations and kinds (``kdjax.train.kinds``), with a context whose
trained models are fresh initialisations and whose runner is ``kdjax.parallel.MeshRunner`` over
the topology's devices; the state is traced with ``jax.eval_shape`` and the batches are
``ShapeDtypeStruct``s from the dataset's metadata, so no parameter is materialised and no example
is read.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from kdjax import data as data_lib
from kdjax import parallel
from kdjax.train import config as config_lib
from kdjax.train import evaluation
from kdjax.train import pipeline
from kdjax.train import rundata
from kdjax.train.errors import ConfigError

from kdjax.train import kinds

# Training-split sizes of TFDS datasets that are not prepared on this machine (the TFDS
# catalog); they set epoch-based schedules and the size of per-example memory banks (CRD).
TFDS_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000,
                    "fashion_mnist": 60_000, "kmnist": 60_000, "svhn_cropped": 73_257}


@dataclasses.dataclass
class ShapeData:
  """A run's data as far as building and compiling its step needs: shapes, no examples."""

  config: Any
  shapes: rundata.Shapes
  text: bool = False
  classes: tuple[int, ...] = ()

  @property
  def targets(self) -> dict[str, Any]:
    # Image classification: one integer label per example (what the metadata says of it).
    return {"label": ((), np.dtype(np.int32))}

  @property
  def task(self) -> Any:
    if self.text:
      return rundata.TextData.task
    from kdjax.train import tasks  # pylint: disable=g-import-not-at-top
    return tasks.task_of(self.targets)

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    # The run layer's own batch layout (the same keys and dtypes the step is traced with).
    owner = rundata.TextData if self.text else rundata.ImageData
    return owner.example_batch(self, batch_size)

  def eval_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    batch = self.example_batch(batch_size)
    if not self.text:
      # kdjax.data's evaluation batches: padded to a fixed size, with a validity mask.
      batch = {"image": batch["image"], "label": batch["label"], "index": batch["index"],
               "mask": jax.ShapeDtypeStruct((batch_size,), np.bool_)}
    return batch

  def reduce_fn(self) -> Callable:
    if self.text:
      return evaluation.make_token_reduce_fn()
    return evaluation.make_reduce_fn(self.shapes.num_classes)


def _image_shapes(config: Any, num_train: int | None) -> rundata.Shapes:
  name = config.data.name
  if name.startswith("tfds:"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from kdjax.data import _tfds  # pylint: disable=g-import-not-at-top
    tfds_name = _tfds.parse_tfds_name(name)
    try:
      builder = tfds.builder(tfds_name, data_dir=config.data.data_dir or None)
    except ValueError as e:
      raise ConfigError(f"config.data.name={name!r}: TFDS does not know this dataset "
                        f"({str(e).splitlines()[0]})") from None
    features = builder.info.features
    split = builder.info.splits.get(config.data.train_split) if builder.info.splits else None
    known = split.num_examples if split is not None else TFDS_TRAIN_SIZES.get(
        tfds_name.split("/")[0])
    count = num_train or known
    if not count:
      raise ConfigError(f"config.data.name={name!r} is not prepared here and its training-set "
                        "size is unknown; pass --num_train=N (the examples in "
                        f"config.data.train_split={config.data.train_split!r})")
    return rundata.Shapes(num_classes=int(features["label"].num_classes),
                          input_shape=tuple(features["image"].shape), num_train=int(count))
  # Bundled, generated and file datasets: their info (file headers, bundled arrays).
  info = data_lib.get_info(name, data_dir=config.data.data_dir or None,
                           image_size=config.data.image_size or None)
  return rundata.Shapes(num_classes=info.num_classes, input_shape=tuple(info.input_shape),
                        num_train=num_train or info.num_train)


def resolve(config: Any, *, num_train: int | None = None) -> tuple[Any, ShapeData]:
  """The resolved config (as ``kdjax.main`` resolves it) and the shapes of its data."""
  config = config_lib.resolve(config)
  if config.parallel != "jit":
    raise ConfigError("kdjax plan compiles the jit (mesh) path; set --config.parallel=jit (pmap "
                      "runs the same step per device, so its plan is the jit plan's)")
  if config.teacher_cache.enabled:
    raise ConfigError("kdjax plan does not compile teacher-cache runs; set "
                      "--config.teacher_cache.enabled=False to plan the run with its teacher "
                      "inside the step (the larger program)")
  if config.data.name.startswith(rundata.TEXT_PREFIX):
    text = rundata.TextData(config)  # The bundled text: its vocabulary sets the model's width.
    data = ShapeData(config, text.shapes, text=True)
    config = config_lib.with_dataset(config, num_classes=text.shapes.num_classes,
                                     eval_split="valid")
  else:
    shapes = _image_shapes(config, num_train)
    config = config_lib.with_dataset(config, num_classes=shapes.num_classes, eval_split="test")
    data = ShapeData(config, shapes)
  data.config = config
  return config, data


@dataclasses.dataclass
class _PlanContext(kinds.Context):
  """The run layer's context with fresh models for trained ones and the topology's mesh."""

  mesh: Any = None

  def data_for(self, classes: tuple[int, ...] = ()) -> ShapeData:
    classes = tuple(classes)
    if not classes:
      return self.data
    shapes = self.data.shapes
    # A class subset keeps that share of the training split (balanced datasets).
    subset = dataclasses.replace(
        shapes, num_classes=max(classes) + 1,
        num_train=max(1, shapes.num_train * len(classes) // shapes.num_classes))
    return dataclasses.replace(self.data, shapes=subset, classes=classes)

  def trained(self, run: str, *, taps=()):
    # Every earlier run's model, a checkpoint's included, is a fresh initialisation of its
    # section: the same shapes, nothing read from disk.
    decl = self.decls[run]
    return self.model(decl.section(), seed=decl.seed, taps=taps,
                      num_classes=decl.num_classes(self.decls), data=self.data_for(decl.classes))

  def runner(self, **kwargs) -> parallel.MeshRunner:
    c = self.config
    try:
      mesh = parallel.make_mesh(dict(c.mesh), devices=self.mesh)
    except ValueError as e:
      raise ConfigError(f"config.mesh: {e}") from None
    return parallel.MeshRunner(mesh, shard_teacher=c.shard_teacher,
                               shard_student=c.shard_student, **kwargs)


def declarations(config: Any) -> list[tuple[str, str, tuple[str, ...]]]:
  """``(name, kind, teachers)`` of every run ``config`` declares, checked by the run layer."""
  return [(d.name, d.kind, tuple(getattr(d, "teachers", ()) or ()))
          for d in kinds.declarations(config)]


@dataclasses.dataclass
class RunProgram:
  """One run's step and evaluation, jitted as the run jits them, with abstract arguments."""

  name: str
  kind: str
  train: Any  # jax.jit-wrapped (state, batch) -> (state, metrics)
  train_args: tuple[Any, Any]
  eval: Any
  eval_args: tuple[Any, Any]
  batch_size: int
  eval_batch_size: int
  params: int
  total_steps: int  # 0: a loaded model, only evaluated


_STANDARD_EVAL = ("supervised", "distill", "load", "lwf")


def _sum_outputs(out: Any, batch: Any) -> Any:
  del batch
  return jax.tree.map(lambda x: x.astype(np.float32).sum(), out)


def _with_sharding(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def programs(config: Any, data: ShapeData, devices: Sequence[Any],
             only: Sequence[str] = ()) -> list[RunProgram]:
  """Every run ``config`` declares (or those named in ``only``), ready to lower and compile."""
  pipeline._check_devices(config, len(devices))  # pylint: disable=protected-access
  out = []
  decls = kinds.declarations(config)
  ctx = _PlanContext(config=config, data=data, workdir="", decls={d.name: d for d in decls},
                     abstract=True, mesh=list(devices))
  for decl in decls:
    name, kind = decl.name, decl.kind
    if only and name not in only:
      continue
    plan = kinds.KINDS[kind].plan(ctx, decl)
    if plan.init_state is None:  # A run that trains nothing (an export of earlier runs).
      continue
    try:
      state = jax.eval_shape(plan.init_state)
    except (ConfigError, data_lib.DataError) as e:
      raise type(e)(str(e).split("\n--------------------\n")[0]) from None
    runner = plan.make_runner()
    # The runner's own placement: its sharding rules and its jitted step (MeshRunner.step).
    runner.state_sharding = runner._state_sharding(state)  # pylint: disable=protected-access
    placed = _with_sharding(state, runner.state_sharding)
    batch_sharding = parallel.batch_sharding(runner.mesh)
    batch = data.example_batch(config.batch_size)
    batch = _with_sharding(batch, {k: batch_sharding for k in batch})
    eval_size = int(config.data.eval_batch_size)
    eval_batch = data.eval_batch(eval_size)
    eval_batch = _with_sharding(eval_batch, {k: batch_sharding for k in eval_batch})
    # Kinds with their own evaluation outputs (mutual: one set per member) are summed whole.
    reduce_fn = data.reduce_fn() if kind in _STANDARD_EVAL else _sum_outputs
    eval_fn = runner._eval_fn  # pylint: disable=protected-access
    train = runner._jit("step", runner.step_fn, True)  # pylint: disable=protected-access
    evaluate = runner._jit("eval", lambda s, b, f=eval_fn: reduce_fn(f(s, b), b), False)  # pylint: disable=protected-access
    params = state.params.get("student") if isinstance(getattr(state, "params", None),
                                                        Mapping) else getattr(state, "params", ())
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    out.append(RunProgram(name, kind, train, (placed, batch), evaluate,
                          (placed, eval_batch), config.batch_size, eval_size, count,
                          plan.total_steps))
  return out

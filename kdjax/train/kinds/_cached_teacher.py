"""The ``distill`` kind's cached-teacher variant: ``config.teacher_cache``.

With ``config.teacher_cache.enabled``, a ``distill`` run (one teacher) first builds, resumes or
reuses the cache of its teacher's logits on ``replay_epochs`` replayed views of the training
split (:func:`kdjax.teacher_cache.build_teacher_cache`, in ``teacher_cache.dir`` or
``WORKDIR/teacher_cache``, in ``<teacher run>/<fingerprint>/``: caches of other teachers or
settings sharing the directory stay beside it), then trains the student with no
teacher in its state on the replayed stream, each batch carrying the cached outputs of its views
(:meth:`kdjax.teacher_cache.CachedTeacher.wrap`). The step runs no teacher forward; evaluation
still compares the student with the real teacher (``agreement``).

Only teacher-free terms train on a cache: a plain ``kd`` term becomes ``cached_kd`` with its
temperature, weight and warm-up (exact Hinton KD when all logits are cached, ``k = 0``);
``cached_kd`` terms take the cache's ``mode``; any other term that reads the teacher is refused
when the run is planned, before any work.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from kdjax import objectives
from kdjax import teacher_cache
from kdjax import workdir as contract
from kdjax.train import builders
from kdjax.train.errors import ConfigError, Preempted
from kdjax.train.kinds import base


def objective_on_cache(spec: Mapping[str, Any], settings: Any, *, run: str) -> dict[str, Any]:
  """A config objective (``{name: {kind, ...}}``) as it trains on a teacher cache, checked.

  ``kd`` terms (without ``standardize``) become ``cached_kd`` terms with the same temperature,
  weight and warm-up; ``cached_kd`` terms get ``settings.mode``.

  Raises:
    ConfigError: a term needs the online teacher (a feature, relation or other logit term), or
      a ``cached_kd`` term's mode is not the cache's.
  """
  out = {}
  for name, term in builders.plain(spec).items():
    term = dict(term)
    if term.get("kind") == "kd" and not term.get("standardize"):
      term.pop("standardize", None)
      term["kind"] = "cached_kd"
    if term.get("kind") == "cached_kd":
      mode = term.setdefault("mode", settings.mode)
      if mode != settings.mode:
        raise ConfigError(f"run '{run}': objective term {name!r} has mode={mode!r} but "
                          f"config.teacher_cache.mode={settings.mode!r}; leave the term's mode "
                          "out (it follows the cache) or set both to the same value")
    out[name] = term
  try:
    teacher_cache.check_objective(out)
  except teacher_cache.TeacherCacheError as e:
    raise ConfigError(f"run '{run}' with config.teacher_cache.enabled=True: {e}") from None
  return out


def cache_temperature(spec: Mapping[str, Any], mode: str, *, run: str) -> float:
  """The temperature a cache of ``mode`` is built at for the ``cached_kd`` terms of ``spec``.

  Raw logits (``'renormalize'``) serve every temperature; log-probabilities (``'remainder'``)
  are stored at the one temperature of the objective's ``cached_kd`` terms.
  """
  if mode != "remainder":
    return 1.0
  default = objectives.KD_TEMPERATURE
  temperatures = sorted({float(t.get("temperature", default)) for t in spec.values()
                         if t.get("kind") == "cached_kd"})
  if len(temperatures) > 1:
    raise ConfigError(f"run '{run}': config.teacher_cache.mode='remainder' stores the teacher's "
                      f"log-probabilities at one temperature, but the objective's KD terms use "
                      f"{temperatures}; give them one temperature or use mode='renormalize'")
  return temperatures[0] if temperatures else 1.0


class CachedTeacherData:
  """A run's image data whose training stream replays views and carries their teacher outputs.

  Everything but the training stream and its example batch is the wrapped data's (shapes,
  evaluation). :meth:`build` makes the cache (the run's ``prepare``); :meth:`train_iterator`
  is then the replayed stream wrapped by :meth:`kdjax.teacher_cache.CachedTeacher.wrap`, whose
  ``get_state`` / ``set_state`` checkpoint the data position as before.
  """

  def __init__(self, data: Any, settings: Any, *, run: str, root: str,
               teacher: Callable[[], Any], teacher_config: Mapping[str, Any], seed: int,
               num_classes: int, temperature: float, progress_bar: bool = False,
               input_key: str = "image"):
    self.data = data
    self.settings = settings
    self.run = run
    self.root = root
    self.directory = root  # The cache's own subdirectory once built (keyed_directory).
    self.teacher = teacher
    self.teacher_config = dict(teacher_config)
    self.seed = seed
    self.num_classes = num_classes
    self.temperature = temperature
    self.progress_bar = progress_bar
    self.input_key = input_key  # The views' entry the teacher reads.
    self.cache: teacher_cache.CachedTeacher | None = None

  @property
  def shapes(self) -> Any:
    return self.data.shapes

  @property
  def config(self) -> Any:
    return self.data.config

  def evaluate(self, runner: Any, state: Any, *, num_classes: int) -> dict[str, float]:
    return self.data.evaluate(runner, state, num_classes=num_classes)

  def eval_batches(self, split: str | None = None) -> Any:
    return self.data.eval_batches(split)

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    b, k = batch_size, self.settings.k or self.num_classes
    indices = teacher_cache.index_dtype(self.num_classes)
    return {**self.data.example_batch(b),
            teacher_cache.REPLAY_KEY: jax.ShapeDtypeStruct((b,), jnp.int32),
            objectives.TOPK_VALUES_KEY: jax.ShapeDtypeStruct(
                (b, k), teacher_cache.VALUE_DTYPES[self.settings.values_dtype]),
            objectives.TOPK_INDICES_KEY: jax.ShapeDtypeStruct((b, k), indices)}

  def keyed_directory(self, teacher: Any, views: Any) -> str:
    """``<root>/<fingerprint>``: the cache of this teacher on these views with these settings.

    Keyed by :func:`kdjax.teacher_cache.teacher_fingerprint` (the teacher's variables and what
    fixes the cached values), so workdirs sharing ``config.teacher_cache.dir`` keep their caches
    side by side instead of replacing each other's.
    """
    s = self.settings
    key = teacher_cache.teacher_fingerprint(teacher.params, teacher.model_state, {
        "teacher": self.teacher_config, "views": views.settings, "k": s.k, "mode": s.mode,
        "temperature": self.temperature, "values_dtype": s.values_dtype,
        "num_classes": self.num_classes, "replay_epochs": s.replay_epochs,
        "input_key": self.input_key})
    return os.path.join(self.root, key[:16])

  def build(self, watch: Any = None) -> teacher_cache.CachedTeacher:
    """Builds, resumes or reuses the cache; a SIGTERM / SIGINT stops it between units."""
    s = self.settings
    views = self.data.replay_views(seed=self.seed, replay_epochs=s.replay_epochs)
    teacher = self.teacher()
    self.directory = self.keyed_directory(teacher, views)
    batch_size = s.batch_size or max(
        1, self.data.config.data.eval_batch_size // jax.process_count())
    bar = None

    def on_chunk(done: int, total: int) -> None:
      nonlocal bar
      if watch is not None and watch.signum is not None:
        raise Preempted(
            f"run '{self.run}' was stopped while building its teacher cache in "
            f"{self.directory}; the finished parts are kept: run the same command again to "
            "resume", run=self.run, step=0, signum=watch.signum)
      if self.progress_bar and contract.is_main():
        if bar is None:
          from tqdm import tqdm  # pylint: disable=g-import-not-at-top
          bar = tqdm(total=total, initial=done - 1, desc=f"{self.run}: teacher cache",
                     unit="chunk", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        bar.update(done - bar.n)

    try:
      self.cache = teacher_cache.build_teacher_cache(
          self.directory, teacher, views, k=s.k or None, mode=s.mode,
          temperature=self.temperature, values_dtype=s.values_dtype,
          teacher_config=self.teacher_config, batch_size=batch_size,
          chunk_size=s.chunk_size or None, on_stale=s.on_stale, on_chunk=on_chunk,
          input_key=self.input_key)
    except teacher_cache.TeacherCacheError as e:
      raise ConfigError(f"run '{self.run}', config.teacher_cache: {e}") from None
    finally:
      if bar is not None:
        bar.close()
    return self.cache

  def train_iterator(self, *, seed: int, batch_size: int) -> teacher_cache.CachedIterator:
    if self.cache is None:
      self.build()
    stream = self.data.train_iterator(seed=seed, batch_size=batch_size,
                                      replay_epochs=self.settings.replay_epochs)
    try:
      return self.cache.wrap(stream)
    except teacher_cache.TeacherCacheError as e:
      stream.close()
      raise ConfigError(f"run '{self.run}', config.teacher_cache: {e}") from None


def cached_data(ctx: Any, decl: Mapping[str, Any], data: Any, spec: Mapping[str, Any], *,
                num_classes: int) -> CachedTeacherData:
  """The data of ``distill`` run ``decl`` reading its teacher from a cache, checked.

  Args:
    ctx: the pipeline's :class:`kdjax.train.kinds.base.Context`.
    decl: the run's declaration (one teacher).
    data: its image data.
    spec: its objective, as :func:`objective_on_cache` returns it.
    num_classes: the class count of its models.
  """
  settings, name = ctx.config.teacher_cache, decl.name
  teachers = tuple(decl.teachers)
  if len(teachers) != 1:
    raise ConfigError(f"run '{name}' distills from {len(teachers)} teachers {list(teachers)}, "
                      "but config.teacher_cache holds the outputs of one teacher; declare one "
                      "teacher or set config.teacher_cache.enabled=False")
  if not hasattr(data, "replay_views"):
    raise ConfigError(f"config.teacher_cache caches image views; config.data.name="
                      f"{ctx.config.data.name!r} is not an image dataset (for language models "
                      "use kdjax.lm.TeacherCache, see docs/lm.md), so set "
                      "config.teacher_cache.enabled=False")
  if settings.k > num_classes:
    raise ConfigError(f"config.teacher_cache.k={settings.k} but the models have {num_classes} "
                      f"classes; use k in [1, {num_classes}] or 0 (all logits)")
  root = settings.dir or (os.path.join(ctx.workdir, contract.TEACHER_CACHE_DIR)
                          if ctx.workdir else "")
  if not root:
    raise ConfigError("config.teacher_cache.dir is empty and there is no workdir to put the "
                      "cache in; set config.teacher_cache.dir")
  run = teachers[0]
  identity = builders.plain(ctx.section(ctx.decls[run].section()))
  return CachedTeacherData(
      data, settings, run=name, root=os.path.join(root, run),
      teacher=lambda: ctx.trained(run),
      teacher_config={k: identity.get(k) for k in ("model", "model_kwargs", "dtype")},
      seed=ctx.config.seed, num_classes=num_classes,
      temperature=cache_temperature(spec, settings.mode, run=name),
      progress_bar=ctx.config.progress_bar,
      input_key=base.input_key(ctx, ctx.decls[run].section(), data))

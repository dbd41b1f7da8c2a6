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

Language models (``config.data.name = 'text:...'``): the cache holds, per token of the training
windows, the teacher's top-k logits (``config.teacher_cache.targets='topk'``, read by
``cached_kd``) or ``k`` entries sampled from its distribution with their renormalised
probabilities (``'sampled'``, Gemma 3's offline targets, read by ``sampled_kd``), built by
:func:`kdjax.teacher_cache.build_token_cache` in ``<dir>/<teacher run>/<targets>``: resumable,
and rebuilt (or, with ``on_stale='error'``, refused) when the teacher, the tokenizer, the token
rows, ``k``, ``config.seed`` or the temperature changed.
"""
from __future__ import annotations

import hashlib
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
from kdjax.train import rundata


def objective_on_cache(spec: Mapping[str, Any], settings: Any, *, run: str) -> dict[str, Any]:
  """A config objective (``{name: {kind, ...}}``) as it trains on a teacher cache, checked.

  ``kd`` terms (without ``standardize``) become ``cached_kd`` terms with the same temperature,
  weight and warm-up; ``cached_kd`` terms get ``settings.mode``. With
  ``settings.targets == 'sampled'`` they become ``sampled_kd`` terms instead.

  Raises:
    ConfigError: a term needs the online teacher (a feature, relation or other logit term), or
      a ``cached_kd`` term's mode is not the cache's.
  """
  out = {}
  sampled = getattr(settings, "targets", "topk") == "sampled"
  for name, term in builders.plain(spec).items():
    term = dict(term)
    if term.get("kind") == "kd" and not term.get("standardize"):
      term.pop("standardize", None)
      term["kind"] = "sampled_kd" if sampled else "cached_kd"
    if sampled and term.get("kind") == "cached_kd":
      raise ConfigError(f"run '{run}': objective term {name!r} has kind 'cached_kd' (top-k "
                        "targets) but config.teacher_cache.targets='sampled'; use kind 'kd' or "
                        "'sampled_kd', or set config.teacher_cache.targets='topk'")
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


def cache_temperature(spec: Mapping[str, Any], mode: str, *, run: str,
                      targets: str = "topk") -> float:
  """The temperature a cache of ``mode`` is built at for the ``cached_kd`` terms of ``spec``.

  Raw logits (``'renormalize'``) serve every temperature; log-probabilities (``'remainder'``)
  are stored at the one temperature of the objective's ``cached_kd`` terms; sampled targets
  (``targets='sampled'``) are drawn at the one temperature of its ``sampled_kd`` terms.
  """
  if targets == "sampled":
    kind, default, what = "sampled_kd", 1.0, "config.teacher_cache.targets='sampled' samples"
  elif mode == "remainder":
    kind, default = "cached_kd", objectives.KD_TEMPERATURE
    what = "config.teacher_cache.mode='remainder' stores"
  else:
    return 1.0
  temperatures = sorted({float(t.get("temperature", default)) for t in spec.values()
                         if t.get("kind") == kind})
  if len(temperatures) > 1:
    fix = "" if targets == "sampled" else " or use mode='renormalize'"
    raise ConfigError(f"run '{run}': {what} the teacher's distribution at one temperature, but "
                      f"the objective's KD terms use {temperatures}; give them one "
                      f"temperature{fix}")
  return temperatures[0] if temperatures else 1.0


class BuildProgress:
  """The ``on_chunk`` callback of a cache build of ``data`` (a :class:`CachedTeacherData` or
  :class:`CachedTokenData`): after each finished chunk it raises :class:`Preempted` once
  ``watch`` has seen a SIGTERM / SIGINT (the finished chunks stay for a resume) and, with
  ``data.progress_bar``, advances a progress bar on the main process; :meth:`close` closes it.
  """

  def __init__(self, data: Any, watch: Any = None):
    self.data = data
    self.watch = watch
    self.bar = None

  def __call__(self, done: int, total: int) -> None:
    data, watch = self.data, self.watch
    if watch is not None and watch.signum is not None:
      raise Preempted(
          f"run '{data.run}' was stopped while building its teacher cache in "
          f"{data.directory}; the finished parts are kept: run the same command again to "
          "resume", run=data.run, step=0, signum=watch.signum)
    if data.progress_bar and contract.is_main():
      if self.bar is None:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top
        self.bar = tqdm(total=total, initial=done - 1, desc=f"{data.run}: teacher cache",
                        unit="chunk", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
      self.bar.update(done - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class CachedTeacherData(rundata.WrappedData):
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
    on_chunk = BuildProgress(self, watch)
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
      on_chunk.close()
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
  text = not hasattr(data, "replay_views")
  if text and not hasattr(data, "train"):
    raise ConfigError(f"config.teacher_cache caches image views or token windows; the data of "
                      f"config.data.name={ctx.config.data.name!r} is neither, so set "
                      "config.teacher_cache.enabled=False")
  if not text and settings.targets != "topk":
    raise ConfigError(f"config.teacher_cache.targets={settings.targets!r} applies to language "
                      f"models (token windows); config.data.name={ctx.config.data.name!r} is an "
                      "image dataset, so use config.teacher_cache.targets='topk'")
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
  if text:
    return CachedTokenData(
        data, settings, run=name, directory=os.path.join(root, run, settings.targets),
        teacher=lambda: ctx.trained(run),
        teacher_config={k: identity.get(k) for k in ("model", "model_kwargs", "dtype")},
        seed=ctx.config.seed, num_classes=num_classes,
        temperature=cache_temperature(spec, settings.mode, run=name, targets=settings.targets),
        tokenizer=tokenizer_identity(ctx.config.data.tokenizer, num_classes),
        input_key=base.input_key(ctx, ctx.decls[run].section(), data),
        progress_bar=ctx.config.progress_bar)
  return CachedTeacherData(
      data, settings, run=name, root=os.path.join(root, run),
      teacher=lambda: ctx.trained(run),
      teacher_config={k: identity.get(k) for k in ("model", "model_kwargs", "dtype")},
      seed=ctx.config.seed, num_classes=num_classes,
      temperature=cache_temperature(spec, settings.mode, run=name),
      progress_bar=ctx.config.progress_bar,
      input_key=base.input_key(ctx, ctx.decls[run].section(), data))


def tokenizer_identity(tokenizer: str, vocab_size: int) -> str:
  """What identifies the tokenizer of ``config.data.tokenizer`` in a token cache: the SHA-256
  of its file, or ``'bytes:<vocab>'`` for the byte-level tokens of an empty one."""
  if not tokenizer:
    return f"bytes:{vocab_size}"
  from kdjax.train import schema  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  with open(schema.tokenizer_file(tokenizer), "rb") as f:
    digest.update(f.read())
  return digest.hexdigest()


# Where a token cache's recorded fields come from in a config (its stale message names them).
STALE_NAMES = {
    "teacher": "teacher", "tokenizer": "config.data.tokenizer",
    "rows": "token rows (config.data)", "k": "config.teacher_cache.k", "seed": "config.seed",
    "temperature": "temperature (of the objective's KD term)",
    "weighting": "config.teacher_cache.weighting", "mode": "config.teacher_cache.mode",
    "values_dtype": "config.teacher_cache.values_dtype",
    "targets": "config.teacher_cache.targets", "format": "format",
}


class CachedTokenData(rundata.WrappedData):
  """A language-model run's token windows whose training rows carry the teacher's cached targets.

  Everything but the training stream and its example batch is the wrapped data's (shapes,
  evaluation). :meth:`build` (the run's ``prepare``) builds, resumes or reuses the cache of the
  training rows (:func:`kdjax.teacher_cache.build_token_cache`); :meth:`train_iterator` is then
  the run's usual shuffled stream of rows (the same order as without a cache) with each row's
  cached arrays sliced beside its tokens.
  """

  def __init__(self, data: Any, settings: Any, *, run: str, directory: str,
               teacher: Callable[[], Any], teacher_config: Mapping[str, Any], seed: int,
               num_classes: int, temperature: float, tokenizer: str, input_key: str,
               progress_bar: bool = False):
    self.data = data
    self.settings = settings
    self.run = run
    self.directory = directory
    self.teacher = teacher
    self.teacher_config = dict(teacher_config)
    self.seed = seed
    self.num_classes = num_classes
    self.k = settings.k or num_classes
    self.temperature = temperature
    self.tokenizer = tokenizer
    self.input_key = input_key
    self.progress_bar = progress_bar
    self.cache: teacher_cache.TokenCache | None = None

  def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, *self.data.shapes.input_shape[:1], self.k)
    values = jax.ShapeDtypeStruct(shape, teacher_cache.VALUE_DTYPES[self.settings.values_dtype])
    indices = jax.ShapeDtypeStruct(shape, teacher_cache.index_dtype(self.num_classes))
    keys = ((objectives.SAMPLED_WEIGHTS_KEY, objectives.SAMPLED_INDICES_KEY)
            if self.settings.targets == "sampled" else
            (objectives.TOPK_VALUES_KEY, objectives.TOPK_INDICES_KEY))
    return {**self.data.example_batch(batch_size), keys[0]: values, keys[1]: indices}

  def build(self, watch: Any = None) -> teacher_cache.TokenCache:
    """Builds, resumes or reuses the cache; a SIGTERM / SIGINT stops it between units."""
    s = self.settings
    batch_size = s.batch_size or max(1, self.data.config.data.eval_batch_size)
    on_chunk = BuildProgress(self, watch)
    try:
      self.cache = teacher_cache.build_token_cache(
          self.directory, self.teacher(), self.data.train[self.input_key],
          targets=s.targets, k=self.k, seed=self.seed, temperature=self.temperature,
          weighting=s.weighting, mode=s.mode, values_dtype=s.values_dtype,
          tokenizer=self.tokenizer, teacher_config=self.teacher_config, batch_size=batch_size,
          chunk_size=s.chunk_size or None, on_stale=s.on_stale, on_chunk=on_chunk)
    except teacher_cache.TokenCacheStale as e:
      what = teacher_cache.describe_differences(e.differences, STALE_NAMES)
      raise ConfigError(
          f"run '{self.run}', config.teacher_cache: the cache in {self.directory} was built for "
          f"another {what}; set config.teacher_cache.on_stale='rebuild' to rebuild it, or point "
          "config.teacher_cache.dir elsewhere") from None
    except teacher_cache.TeacherCacheError as e:
      raise ConfigError(f"run '{self.run}', config.teacher_cache: {e}") from None
    finally:
      on_chunk.close()
    return self.cache

  def train_iterator(self, *, seed: int, batch_size: int) -> rundata.TokenIterator:
    if self.cache is None:
      self.build()
    return rundata.TokenIterator(self.cache.attach(self.data.train), seed=seed,
                                 batch_size=batch_size)

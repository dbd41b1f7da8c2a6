"""Offline teacher: its outputs on every replayed training view, computed once, read from disk.

For an image pair like resnet32x4 -> resnet8x4 the teacher's forward pass costs about twice the
student's forward and backward together, and the teacher never changes. With augmentation replay
(``kdjax.data.make_train_iterator(..., replay_epochs=E)``) the view of example ``i`` in epoch
``e`` is a function of ``(seed, e mod E, i)``, so the teacher's outputs on all ``E x N`` views can
be computed once, in large jitted batches over the local devices, and stored:

1. :func:`build_teacher_cache` writes (or resumes, or reuses) a cache directory: per replay epoch
   and example, the teacher's top-``k`` logits (values float16 / bfloat16 / float32, indices
   int16 or int32), or all of its logits. The work is cut into units of ``chunk_size`` examples
   of one replay epoch; each process computes the units ``u`` with ``u % process_count ==
   process_index`` and writes each one atomically, so a build killed halfway continues where it
   stopped, with any process count. The cache is identified by a fingerprint of the teacher's
   parameters and the settings that fix the views and values (:func:`teacher_fingerprint`); a
   cache with another fingerprint is rebuilt (or refused), never used; so is one whose arrays
   no longer match the per-part checksums stored with them (checked on every open).
2. :meth:`CachedTeacher.wrap` wraps the training iterator: each batch gets the cached
   ``'teacher_topk_values'`` / ``'teacher_topk_indices'`` of its rows, looked up by
   ``('replay_epoch', 'index')``.
3. :func:`kdjax.objectives.cached_kd` (config kind ``'cached_kd'``) is the KD term that reads
   them: sparse KD over the cached classes, exact Hinton KD when all logits are cached. The
   state then has no teacher (``DistillState.create(teacher=None, ...)``) and the step runs no
   teacher forward.

Terms that read the live teacher's outputs (``Needs.teacher_outputs``: KD on live logits,
FitNets, AT, CRD, ...) still need the online teacher; :func:`check_objective` names them.

Language models: :func:`build_token_cache` caches, per token of the training rows (packed or
not), the teacher's top-k logits or ``k`` entries sampled from its distribution (Gemma 3's
offline targets), read by :func:`kdjax.objectives.cached_kd` / :func:`kdjax.objectives.sampled_kd`
(:class:`TokenCache`; resumable, fingerprinted with the teacher, tokenizer and rows).

Example::

  views = kdjax.data.make_replay_views('cifar100', seed=0, replay_epochs=8, augment=augment)
  cache = teacher_cache.build_teacher_cache(workdir + '/teacher_cache', teacher, views, k=10)
  it = cache.wrap(kdjax.data.make_train_iterator('cifar100', global_batch_size=64, seed=0,
                                                 augment=augment, replay_epochs=8))
  objective = objectives.combine({'ce': (objectives.cross_entropy(), 0.1),
                                  'kd': (objectives.cached_kd(temperature=4.0), 0.9)})
  state = kdjax.DistillState.create(student=student, teacher=None, objective=objective, ...)
"""
from kdjax.teacher_cache._build import build_teacher_cache
from kdjax.teacher_cache._check import check_objective
from kdjax.teacher_cache._iterator import CachedIterator
from kdjax.teacher_cache._store import INDEX_KEY
from kdjax.teacher_cache._store import ON_STALE
from kdjax.teacher_cache._store import REPLAY_KEY
from kdjax.teacher_cache._store import VALUE_DTYPES
from kdjax.teacher_cache._store import CachedTeacher
from kdjax.teacher_cache._store import TeacherCacheCorrupt
from kdjax.teacher_cache._store import TeacherCacheError
from kdjax.teacher_cache._store import index_dtype
from kdjax.teacher_cache._store import load_teacher_cache
from kdjax.teacher_cache._store import teacher_fingerprint
from kdjax.teacher_cache._tokens import IDENTITY
from kdjax.teacher_cache._tokens import TARGETS
from kdjax.teacher_cache._tokens import TokenCache
from kdjax.teacher_cache._tokens import TokenCacheStale
from kdjax.teacher_cache._tokens import build_token_cache
from kdjax.teacher_cache._tokens import describe_differences
from kdjax.teacher_cache._tokens import load_token_cache
from kdjax.teacher_cache._tokens import rows_fingerprint

__all__ = (
    "CachedIterator",
    "CachedTeacher",
    "IDENTITY",
    "INDEX_KEY",
    "ON_STALE",
    "REPLAY_KEY",
    "TARGETS",
    "TeacherCacheCorrupt",
    "TeacherCacheError",
    "TokenCache",
    "TokenCacheStale",
    "VALUE_DTYPES",
    "build_teacher_cache",
    "build_token_cache",
    "check_objective",
    "describe_differences",
    "index_dtype",
    "load_teacher_cache",
    "load_token_cache",
    "rows_fingerprint",
    "teacher_fingerprint",
)


"""Ready-made terms: every kdjax loss lifted into an objective term.

``from_loss`` lifts any loss of ``kdjax.losses`` (or your own) into a :class:`Term`: it reads the
student's and teacher's arrays (``'logits'`` or a tap path), optionally passes them through a
trainable adapter, calls the loss and reduces per-example (or per-token) values with the one
:func:`~kdjax.losses.masked_mean` over the positions ``batch['mask']`` marks real (all of them
when there is no mask). Losses that take a ``mask`` argument get it too.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.objectives import _adapters
from kdjax.objectives._base import (Needs, Term, as_tuple, gather_batch, masked_mean,
                                    no_params_init, select, taps_of)

Key = str | Callable[[Any], jax.Array]


def _takes_mask(loss_fn: Callable[..., jax.Array]) -> bool:
  try:
    return "mask" in inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):  # Builtins and some C callables have no signature.
    return False


def batch_entry(batch: Mapping[str, Any], key: str, what: str) -> jax.Array:
  """``batch[key]``, or a ``ValueError`` naming the missing key and the keys the batch has."""
  if not isinstance(batch, Mapping) or key not in batch:
    have = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise ValueError(f"this term reads {what} from batch[{key!r}] but the batch has {have}; add "
                     f"it to the batch or name the right key (e.g. label_key=...)")
  return jnp.asarray(batch[key])


def _zero_padding(mask: jax.Array | None, arrays: list[jax.Array]) -> list[jax.Array]:
  """Zeroes padded positions of every array whose leading axes are the mask's, before adapters
  and losses see them, so NaN or inf padding reaches neither the loss nor any gradient."""
  if mask is None:
    return arrays
  m = jnp.asarray(mask).astype(bool)
  return [loss_utils.mask_inputs(m, a)[0] if a.shape[:m.ndim] == m.shape else a for a in arrays]


def from_loss(loss_fn: Callable[..., jax.Array],
              *,
              student: Key | Sequence[Key] = "logits",
              teacher: Key | Sequence[Key] | None = "logits",
              labels: bool = False,
              batch_level: bool = False,
              adapter: str | None = None,
              adapter_hidden: int | None = None,
              label_key: str = "label",
              mask_key: str | None = "mask",
              takes_mask: bool | None = None,
              **loss_kwargs) -> Term:
  """Lifts a loss function into a term.

  Per-example losses (``[B]`` values, or ``[B, L]`` per token) are reduced with
  :func:`~kdjax.losses.masked_mean` over the positions ``batch[mask_key]`` keeps; the mask must
  have the batch's leading shape (``[B]``, or ``[B, L]`` for token batches), anything else is a
  ``ValueError``. Padded positions are zeroed in the student's and teacher's arrays before the
  adapter and the loss, so NaN or inf padding never reaches the loss or its gradient.

  Args:
    loss_fn: ``loss_fn(student_array, teacher_array, [labels], [mask=...], **loss_kwargs)``;
      per-example losses are averaged over the (masked) examples, batch-level ones used as they
      are.
    student: what to read from the student: ``'logits'``, a tap path, a callable on
      :class:`~kdjax.models.Outputs`, or a sequence of those (one loss per pair, summed).
    teacher: the same for the teacher, paired with ``student``; ``None`` for losses of the
      student alone (then ``loss_fn(student_array, [labels], ...)``).
    labels: pass ``batch[label_key]`` as the third positional argument (e.g. ``dkd``).
    batch_level: the loss is defined over a whole batch (relations: RKD, SP, PKT, CKA, DIST);
      under ``pmap`` its inputs are gathered across devices first.
    adapter: ``'linear'`` (a 1x1 conv on feature maps) or ``'mlp'``: a trainable projection of
      each student array onto the teacher's channel count, trained with the student (FitNets).
    adapter_hidden: hidden width of the ``'mlp'`` adapter.
    label_key: batch key of the integer labels.
    mask_key: batch key of the per-example (or per-token) validity mask used in the
      reduction; ``None`` uses every position.
    takes_mask: pass the mask to ``loss_fn`` as ``mask=`` (the catalogue's per-example losses
      take one; needed where the loss's positions are not the arrays' leading axes, e.g.
      attention maps ``[B, H, L, L]``). Default: whether ``loss_fn`` has a ``mask`` parameter.
    **loss_kwargs: forwarded to ``loss_fn`` (temperature, alpha, ...).
  """
  s_keys = as_tuple(student)
  t_keys = None if teacher is None else as_tuple(teacher)
  if t_keys is not None and len(s_keys) != len(t_keys):
    raise ValueError(f"student taps {s_keys} and teacher taps {t_keys} must pair up one to one")
  if adapter is not None and t_keys is None:
    raise ValueError("an adapter maps student arrays onto teacher arrays; it needs teacher=...")
  if "temperature" in loss_kwargs:
    loss_utils.check_temperature(loss_kwargs["temperature"])
  pass_mask = _takes_mask(loss_fn) if takes_mask is None else bool(takes_mask)

  def arrays(student_out, teacher_out):
    s = [select(student_out, k, side="student") for k in s_keys]
    t = None if t_keys is None else [select(teacher_out, k, side="teacher") for k in t_keys]
    return s, t

  def init(rng, student_out, teacher_out, batch):
    del batch
    if adapter is None:
      return {}, {}
    s, t = arrays(student_out, teacher_out)
    params = {}
    for i, (s_i, t_i, key) in enumerate(zip(s, t, jax.random.split(rng, len(s)))):
      proj = _adapters.make_projector(adapter, t_i.shape[-1], adapter_hidden)
      params[f"adapter_{i}"] = _adapters.init_projector(key, proj, s_i)
    return params, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step
    s, t = arrays(student_out, teacher_out)
    label_arr = batch_entry(batch, label_key, "integer labels") if labels else None
    mask = None
    if not batch_level and mask_key is not None and isinstance(batch, Mapping):
      mask = batch.get(mask_key)
    parts = []  # One loss per student/teacher pair, summed.
    for i in range(len(s)):
      args = _zero_padding(mask, [s[i]] if t is None else [s[i], t[i]])
      if adapter is not None:
        proj = _adapters.make_projector(adapter, args[1].shape[-1], adapter_hidden)
        args[0] = proj.apply({"params": params[f"adapter_{i}"]}, args[0])
      if batch_level:
        args = [gather_batch(a, axis_name) for a in args]
        if labels:
          args.append(gather_batch(label_arr, axis_name))
        parts.append(loss_fn(*args, **loss_kwargs).astype(jnp.float32))
        continue
      if labels:
        args.append(label_arr)
      extra = {"mask": mask} if pass_mask else {}
      parts.append(masked_mean(loss_fn(*args, **extra, **loss_kwargs), mask))
    return sum(parts[1:], parts[0]), state, {}

  needs = Needs(student=taps_of(s_keys), teacher=taps_of(t_keys),
                batch=(label_key,) if labels else (), teacher_outputs=t_keys is not None)
  return Term(init if adapter else no_params_init, apply, needs)


def term_constructor(loss_fn: Callable[..., jax.Array], **options) -> Callable[..., Term]:
  """A keyword-only term constructor for ``loss_fn``: what a config kind of a plain loss calls.

  The constructor's arguments are the loss's own keyword arguments (with the loss's defaults)
  and the taps (``student``, ``teacher``, ``mask_key``, ``label_key`` with ``labels``), and it
  returns ``from_loss(loss_fn, **options, **arguments)``; its signature lists them, so a config
  naming an argument the loss lacks is refused before any work.

  Args:
    loss_fn: a loss of :mod:`kdjax.losses` (or your own) taking the arrays positionally.
    **options: :func:`from_loss` options fixed for this kind (``teacher=None``, ``labels=True``,
      ``batch_level=True``, default ``student``/``teacher`` taps).

  Returns:
    ``ctor(**arguments) -> Term``.
  """
  fixed = dict(options)
  taps = [inspect.Parameter("student", inspect.Parameter.KEYWORD_ONLY,
                            default=fixed.pop("student", "logits"))]
  if fixed.get("teacher", "logits") is not None:
    taps.append(inspect.Parameter("teacher", inspect.Parameter.KEYWORD_ONLY,
                                  default=fixed.pop("teacher", "logits")))
  taps.append(inspect.Parameter("mask_key", inspect.Parameter.KEYWORD_ONLY,
                                default=fixed.pop("mask_key", "mask")))
  if fixed.get("labels"):
    taps.append(inspect.Parameter("label_key", inspect.Parameter.KEYWORD_ONLY,
                                  default=fixed.pop("label_key", "label")))
  own = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default,
                           annotation=p.annotation)
         for p in inspect.signature(loss_fn).parameters.values()
         if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "mask"
         and p.default is not inspect.Parameter.empty]

  signature = inspect.Signature(taps + own, return_annotation=Term)

  def ctor(**arguments) -> Term:
    try:
      signature.bind(**arguments)
    except TypeError as e:
      raise TypeError(f"the {ctor.__name__} term takes {list(signature.parameters)}: {e}") from None
    return from_loss(loss_fn, **fixed, **arguments)

  ctor.__signature__ = signature
  ctor.__name__ = getattr(loss_fn, "__name__", "term")
  ctor.__doc__ = f"The term of :func:`{ctor.__name__}`, lifted by :func:`from_loss`."
  return ctor


# Response-based ------------------------------------------------------------------------------


def cross_entropy(*, label_smoothing: float = 0.0, label_key: str = "label") -> Term:
  """Hard-label cross-entropy of the student's logits (the usual supervised term)."""
  return from_loss(losses.cross_entropy, teacher=None, labels=True, label_key=label_key,
                   label_smoothing=label_smoothing)


def kd(*, temperature: float = 4.0, standardize: bool = False) -> Term:
  """Hinton KD, ``T^2 KL(p_t || p_s)``; ``standardize`` z-scores both logits first (Sun 2024)."""
  return from_loss(_maybe_standardized(losses.kd, standardize), temperature=temperature)


def soft_cross_entropy(*, temperature: float = 4.0) -> Term:
  """Soft-target cross-entropy against the teacher at temperature ``T``."""
  return from_loss(losses.soft_cross_entropy, temperature=temperature)


def reverse_kd(*, temperature: float = 1.0) -> Term:
  """Reverse KD, ``T^2 KL(p_s || p_t)`` (:func:`kdjax.losses.reverse_kd`)."""
  return from_loss(losses.reverse_kd, temperature=temperature)


def jensen_shannon(*, temperature: float = 1.0) -> Term:
  """Jensen-Shannon divergence of the softened distributions (``losses.jensen_shannon``)."""
  return from_loss(losses.jensen_shannon, temperature=temperature)


def logit_mse() -> Term:
  """MSE between student and teacher logits (:func:`kdjax.losses.logit_mse`)."""
  return from_loss(losses.logit_mse)


def dkd(*, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
        label_key: str = "label") -> Term:
  """Decoupled KD (Zhao et al. 2022). Pair it with a warm-up weight schedule in ``combine``."""
  return from_loss(losses.dkd, labels=True, label_key=label_key, alpha=alpha, beta=beta,
                   temperature=temperature)


def dist(*, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> Term:
  """DIST (Huang et al. 2022): inter- and intra-class relations of the predictions, batch-level."""
  return from_loss(losses.dist, batch_level=True, beta=beta, gamma=gamma, temperature=temperature)


def _maybe_standardized(loss_fn, standardize: bool):
  if not standardize:
    return loss_fn

  @functools.wraps(loss_fn)
  def wrapped(s, t, *args, **kwargs):
    return loss_fn(losses.standardize_logits(s), losses.standardize_logits(t), *args, **kwargs)

  return wrapped


# Feature-based -------------------------------------------------------------------------------


def fitnets(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key],
            adapter: str | None = "linear") -> Term:
  """FitNets hints (Romero et al. 2015): MSE between regressed student and teacher features.

  ``adapter`` is the trainable regressor from the student's channels to the teacher's:
  ``'linear'`` (a 1x1 convolution), ``'conv3x3_bn_relu'`` (RepDistiller's ``ConvReg``: 3x3
  convolution, BatchNorm on the batch's statistics, ReLU; what the CIFAR-100 recipes use),
  ``'mlp'`` or ``None`` (channels already equal). Maps of different resolution are compared after
  adaptive-average-pooling the larger one (:func:`kdjax.losses.match_spatial`).
  """
  return from_loss(losses.feature_mse, student=student, teacher=teacher, adapter=adapter)


def attention_transfer(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key],
                       p: float = 2, signed: bool = False) -> Term:
  """Attention transfer (Zagoruyko & Komodakis 2017), summed over the tap pairs.

  ``signed=True`` raises the activations themselves to ``p`` (RepDistiller's ``f^p``) instead
  of their magnitudes (the paper's ``|f|^p``); see :func:`kdjax.losses.attention_transfer`.
  """
  return from_loss(losses.attention_transfer, student=student, teacher=teacher, p=p,
                   signed=signed)


def nst(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key]) -> Term:
  """Neuron selectivity transfer (Huang & Wang 2017): MMD of the maps, summed over tap pairs."""
  return from_loss(losses.nst, student=student, teacher=teacher)


def feature_mse(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key],
                adapter: str | None = None) -> Term:
  """MSE between (optionally adapted) student features and the teacher's, summed over pairs."""
  return from_loss(losses.feature_mse, student=student, teacher=teacher, adapter=adapter)


def cosine(*, student: Key | Sequence[Key], teacher: Key | Sequence[Key],
           adapter: str | None = None) -> Term:
  """``1 - cos`` between hidden states (DistilBERT), averaged over positions."""
  return from_loss(losses.cosine_distance, student=student, teacher=teacher, adapter=adapter)


# Relation-based (batch-level) ----------------------------------------------------------------


def similarity_preserving(*, student: Key | Sequence[Key] = "pre_logits",
                          teacher: Key | Sequence[Key] = "pre_logits") -> Term:
  """Similarity-preserving KD (Tung & Mori 2019): batch similarity matrices, batch-level."""
  return from_loss(losses.similarity_preserving, student=student, teacher=teacher,
                   batch_level=True)


def rkd(*, student: Key = "pre_logits", teacher: Key = "pre_logits",
        distance_weight: float = 25.0, angle_weight: float = 50.0) -> Term:
  """Relational KD (Park et al. 2019): weighted distance + angle losses on embeddings.

  The default weights (25, 50) are the ones the CIFAR-100 benchmarks use.
  """
  def rkd_loss(s, t):
    return (distance_weight * losses.rkd_distance(s, t) + angle_weight * losses.rkd_angle(s, t))

  return from_loss(rkd_loss, student=student, teacher=teacher, batch_level=True)


def rkd_distance(*, student: Key = "pre_logits", teacher: Key = "pre_logits") -> Term:
  """RKD's distance loss (Park et al. 2019) on embeddings, batch-level."""
  return from_loss(losses.rkd_distance, student=student, teacher=teacher, batch_level=True)


def rkd_angle(*, student: Key = "pre_logits", teacher: Key = "pre_logits") -> Term:
  """RKD's angle loss (Park et al. 2019) on embeddings, batch-level."""
  return from_loss(losses.rkd_angle, student=student, teacher=teacher, batch_level=True)


def pkt(*, student: Key = "pre_logits", teacher: Key = "pre_logits") -> Term:
  """Probabilistic knowledge transfer (Passalis & Tefas 2018) on embeddings, batch-level."""
  return from_loss(losses.pkt, student=student, teacher=teacher, batch_level=True)


def cka(*, student: Key = "pre_logits", teacher: Key = "pre_logits") -> Term:
  """``1 - CKA`` (linear centered kernel alignment) between embeddings, batch-level."""
  return from_loss(losses.cka, student=student, teacher=teacher, batch_level=True)


def projected(loss_fn: Callable[..., jax.Array], *, student: Key = "pre_logits",
              teacher: Key = "pre_logits", adapter: str = "linear", batch_level: bool = True,
              **loss_kwargs) -> Term:
  """Any embedding loss with a trainable projector from the student's to the teacher's width."""
  return from_loss(loss_fn, student=student, teacher=teacher, adapter=adapter,
                   batch_level=batch_level, **loss_kwargs)

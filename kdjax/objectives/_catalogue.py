"""Terms for the rest of the reference catalogue: CC, FSP, FT, AB, KDSVD, OFD, SRD and MLKD.

Each term wraps the pure loss of the same name in :mod:`kdjax.losses` with the trainable parts
its method uses (embeddings, connectors, FT's paraphraser and translator, SRD's projector) as term
``params``, and declares the taps it reads in ``needs``. Terms whose method has a stage before
distillation (FT's paraphraser training, AB's initialisation) take that stage's length and are
paired with ``config.stages`` in the recipes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses._multilevel import MLKD_TEMPERATURES
from kdjax.objectives import _adapters
from kdjax.objectives._base import (Needs, Term, as_tuple, gather_batch, masked_mean,
                                    no_params_init, select, taps_of)

Key = str | Callable[[Any], jax.Array]


def _pairs(student, teacher, name: str, minimum: int = 1):
  s_keys, t_keys = as_tuple(student), as_tuple(teacher)
  if len(s_keys) != len(t_keys) or len(s_keys) < minimum:
    raise ValueError(f"{name} pairs student taps {s_keys} with teacher taps {t_keys} one to one "
                     f"(at least {minimum}); list as many of each")
  return s_keys, t_keys


def _read(outputs, keys, side):
  return [select(outputs, k, side=side) for k in keys]


def _init_module(rng, module, *examples, method=None):
  examples = [jnp.zeros(e.shape, jnp.float32) for e in examples]
  return module.init(rng, *examples, method=method)["params"]


# Structure ------------------------------------------------------------------------------------


def correlation_congruence(*, student: Key = "pre_logits", teacher: Key = "pre_logits",
                           feat_dim: int = 128, gamma: float = 0.4,
                           order: int | None = 2) -> Term:
  """Correlation congruence (Peng et al. 2019) on trainable linear embeddings of both sides.

  ``params['embed_student']`` and ``params['embed_teacher']`` map the (flattened) features to
  ``feat_dim`` (RepDistiller's ``LinearEmbed``, 128); :func:`kdjax.losses.correlation_congruence`
  compares the embeddings' Gaussian-RBF correlation matrices over the (global) batch.
  """
  projector = _adapters.make_projector("linear", feat_dim)

  def arrays(student_out, teacher_out):
    s = select(student_out, student, side="student")
    t = select(teacher_out, teacher, side="teacher")
    return s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)

  def init(rng, student_out, teacher_out, batch):
    del batch
    s, t = arrays(student_out, teacher_out)
    k_s, k_t = jax.random.split(rng)
    return {"embed_student": _adapters.init_projector(k_s, projector, s),
            "embed_teacher": _adapters.init_projector(k_t, projector, t)}, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del batch, step
    s, t = arrays(student_out, teacher_out)
    e_s = projector.apply({"params": params["embed_student"]}, s)
    e_t = projector.apply({"params": params["embed_teacher"]}, t)
    e_s, e_t = gather_batch(e_s, axis_name), gather_batch(e_t, axis_name)
    return losses.correlation_congruence(e_s, e_t, gamma=gamma, order=order), state, {}

  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher)))


def fsp(*, student: Sequence[Key], teacher: Sequence[Key], mask_key: str | None = "mask") -> Term:
  """FSP (Yim et al. 2017) between consecutive tapped maps; equal channel counts per pair."""
  s_keys, t_keys = _pairs(student, teacher, "fsp", minimum=2)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, step, axis_name
    value = losses.fsp(_read(student_out, s_keys, "student"), _read(teacher_out, t_keys, "teacher"))
    return masked_mean(value, batch, mask_key), state, {}

  return Term(no_params_init, apply, Needs(student=taps_of(s_keys), teacher=taps_of(t_keys)))


def kdsvd(*, student: Sequence[Key], teacher: Sequence[Key], k: int = 1,
          mask_key: str | None = "mask") -> Term:
  """KDSVD (Lee et al. 2018) over consecutive tapped maps; equal channel counts per pair."""
  s_keys, t_keys = _pairs(student, teacher, "kdsvd", minimum=2)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, step, axis_name
    value = losses.kdsvd(_read(student_out, s_keys, "student"),
                         _read(teacher_out, t_keys, "teacher"), k=k)
    return masked_mean(value, batch, mask_key), state, {}

  return Term(no_params_init, apply, Needs(student=taps_of(s_keys), teacher=taps_of(t_keys)))


# Factor transfer -------------------------------------------------------------------------------


def factor_transfer(*, student: Key, teacher: Key, rate: float = 0.5,
                    paraphraser_steps: int = 0, p: int = 1, channel_power: int | None = None,
                    mask_key: str | None = "mask") -> Term:
  """Factor transfer (Kim et al. 2018): paraphraser on the teacher, translator on the student.

  ``params['paraphraser']`` (an autoencoder of the teacher's map to ``rate * C_t`` factor
  channels) and ``params['translator']`` (the student's map to the same factor width) are trained
  with the student. For the first ``paraphraser_steps`` steps the term is the paraphraser's
  reconstruction MSE on the teacher's map (its pre-training; give this term alone a stage of that
  length in ``config.stages``); afterwards it is :func:`kdjax.losses.factor_transfer` between the
  translator's output and the paraphraser's factor, with the paraphraser frozen: its parameters as
  of the end of pre-training are copied into ``state['paraphraser']`` and read from there, so
  neither gradients nor weight decay move it. Metrics: ``reconstruction``.
  """
  if not 0 < rate <= 1:
    raise ValueError(f"rate (the factor's share of the teacher's channels) must be in (0, 1], "
                     f"got {rate}; the paper uses 0.5")
  paraphraser_steps = int(paraphraser_steps)

  def modules(s, t):
    width = max(1, int(t.shape[-1] * rate))
    return (_adapters.Paraphraser(channels=t.shape[-1], factor=width),
            _adapters.Translator(channels=s.shape[-1], factor=width))

  def arrays(student_out, teacher_out):
    return (select(student_out, student, side="student"),
            select(teacher_out, teacher, side="teacher"))

  def init(rng, student_out, teacher_out, batch):
    del batch
    s, t = arrays(student_out, teacher_out)
    for name, x in (("student", s), ("teacher", t)):
      if x.ndim != 4:
        raise ValueError(f"factor_transfer needs [batch, H, W, C] maps; the {name} tap has shape "
                         f"{x.shape}")
    para, trans = modules(s, t)
    k_p, k_t = jax.random.split(rng)
    params = {"paraphraser": _init_module(k_p, para, t), "translator": _init_module(k_t, trans, s)}
    return params, {"paraphraser": params["paraphraser"]}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del axis_name
    s, t = arrays(student_out, teacher_out)
    t = jax.lax.stop_gradient(t)
    para, trans = modules(s, t)
    pretraining = step < paraphraser_steps
    _, rec = para.apply({"params": params["paraphraser"]}, t)
    reconstruction = jnp.mean(jnp.square(rec - t))
    frozen = jax.tree.map(lambda new, old: jnp.where(pretraining, new, old),
                          jax.lax.stop_gradient(params["paraphraser"]), state["paraphraser"])
    factor_t = para.apply({"params": frozen}, t, method=_adapters.Paraphraser.encode)
    factor_s = trans.apply({"params": params["translator"]}, s)
    transfer = masked_mean(
        losses.factor_transfer(factor_s, jax.lax.stop_gradient(factor_t), p=p,
                               channel_power=channel_power), batch, mask_key)
    loss = jnp.where(pretraining, reconstruction, transfer)
    return loss, {"paraphraser": frozen}, {"reconstruction": reconstruction}

  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher)))


# Activation boundaries, OFD --------------------------------------------------------------------


def _connector_params(rng, s_list, t_list, pairs):
  """A 1x1 conv + BN connector (``params['connector_{i}']``) for each pair ``i`` in ``pairs``."""
  params = {}
  for i, key in zip(pairs, jax.random.split(rng, max(1, len(pairs)))):
    params[f"connector_{i}"] = _init_module(key, _adapters.ConvBN(t_list[i].shape[-1]), s_list[i])
  return params


def _connect(params, i, s_i, t_i):
  key = f"connector_{i}"
  if key not in params:  # A pair whose shapes agree has no connector.
    return s_i
  return _adapters.ConvBN(t_i.shape[-1]).apply({"params": params[key]}, s_i)


def _same_resolution(s_keys, t_keys, s_list, t_list, name):
  for sk, tk, s_i, t_i in zip(s_keys, t_keys, s_list, t_list):
    if s_i.ndim != t_i.ndim or s_i.shape[1:-1] != t_i.shape[1:-1]:
      raise ValueError(f"{name} pairs maps of one resolution, but the student tap {sk!r} has shape "
                       f"{s_i.shape} and the teacher tap {tk!r} {t_i.shape}; tap stages whose "
                       "maps have the same spatial size")


def activation_boundary(*, student: Sequence[Key], teacher: Sequence[Key], margin: float = 1.0,
                        layer_weights: Sequence[float] | None = None, scale: float = 3e-3,
                        mask_key: str | None = "mask") -> Term:
  """Activation boundaries (Heo et al. 2019) on pre-ReLU taps, with connectors where shapes differ.

  ``loss = scale * sum_i w_i * mean_b ab(connector_i(s_i), t_i)``. As in RepDistiller's
  ``Connector``, ``connector_i`` is the identity when the student's and teacher's maps have the
  same shape, and otherwise a trainable map onto the teacher's channels: a 1x1 convolution then
  BatchNorm on the batch's statistics (``params['connector_{i}']``; RepDistiller's ``ConvReg``
  without ReLU, whose convolution bias the BatchNorm cancels). The maps of a pair must have the
  same resolution. RepDistiller's weights
  ``w_i = 2^(i - n + 1)`` (the deepest layer 1) and ``scale = 3 / 1000`` unless given. Tap the
  pre-activation maps (e.g. a block's last BatchNorm). The paper uses this loss as an
  initialisation stage before the classification (or KD) training: put it alone in the first
  entry of ``config.stages``.
  """
  s_keys, t_keys = _pairs(student, teacher, "activation_boundary")
  n = len(s_keys)
  weights = (tuple(float(w) for w in layer_weights) if layer_weights is not None
             else tuple(2.0**(i - n + 1) for i in range(n)))
  if len(weights) != n:
    raise ValueError(f"layer_weights has {len(weights)} entries for {n} tap pairs")

  def init(rng, student_out, teacher_out, batch):
    del batch
    s_list, t_list = _read(student_out, s_keys, "student"), _read(teacher_out, t_keys, "teacher")
    _same_resolution(s_keys, t_keys, s_list, t_list, "activation_boundary")
    differ = [i for i in range(n) if s_list[i].shape != t_list[i].shape]
    return _connector_params(rng, s_list, t_list, differ), {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step, axis_name
    s_list, t_list = _read(student_out, s_keys, "student"), _read(teacher_out, t_keys, "teacher")
    _same_resolution(s_keys, t_keys, s_list, t_list, "activation_boundary")
    total = jnp.zeros((), jnp.float32)
    for i, (s_i, t_i) in enumerate(zip(s_list, t_list)):
      value = losses.activation_boundary(_connect(params, i, s_i, t_i), t_i, margin=margin)
      total = total + weights[i] * masked_mean(value, batch, mask_key)
    return scale * total, state, {}

  return Term(init, apply, Needs(student=taps_of(s_keys), teacher=taps_of(t_keys)))


def _params_at(params: Mapping[str, Any], path: str):
  node = params
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def ofd_margins_from_model(teacher_model, bn_paths: Sequence[str]) -> list[jax.Array]:
  """OFD margins from a teacher's BatchNorm parameters at ``bn_paths`` (``'/'``-joined)."""
  margins = []
  for path in bn_paths:
    bn = _params_at(teacher_model.params, path)
    if not isinstance(bn, Mapping) or "scale" not in bn or "bias" not in bn:
      raise ValueError(f"ofd reads the margin from the teacher's BatchNorm before the ReLU, but "
                       f"the teacher has no BatchNorm parameters (scale, bias) at {path!r}; pass "
                       "teacher_bn=(paths of those BatchNorm modules, e.g. 'stage3/block_0/bn2') "
                       "or margins=(arrays from kdjax.losses.ofd_margin)")
    margins.append(jnp.asarray(losses.ofd_margin(bn["scale"], bn["bias"]), jnp.float32))
  return margins


def ofd(*, student: Sequence[Key], teacher: Sequence[Key], teacher_model: Any = None,
        teacher_bn: Sequence[str] | None = None, margins: Sequence[Any] | None = None,
        mask_key: str | None = "mask") -> Term:
  """Overhaul of feature distillation (Heo et al. 2019) on pre-ReLU taps.

  Each student map goes through a 1x1 conv + BN connector onto the teacher's channels, and
  :func:`kdjax.losses.ofd` compares it with the teacher's pre-ReLU map, adaptive-average-pooled
  to the student's resolution when it is larger (as mdistiller does; a student map larger than
  the teacher's is an error); layer ``i`` of ``n`` is weighted ``1 / 2^(n - i - 1)`` (mdistiller). The per-channel margins come from ``margins``
  (arrays of shape ``[C_i]``) or from the trained ``teacher_model``'s BatchNorm parameters at
  ``teacher_bn`` (default: the teacher tap paths themselves, i.e. tap the BatchNorm output).
  """
  s_keys, t_keys = _pairs(student, teacher, "ofd")
  n = len(s_keys)
  if margins is None:
    if teacher_model is None:
      raise ValueError("ofd needs the teacher's margins: pass teacher_model=(the trained teacher) "
                       "or margins=(one kdjax.losses.ofd_margin array per tap pair)")
    bn_paths = tuple(teacher_bn) if teacher_bn is not None else tuple(
        k for k in t_keys if isinstance(k, str))
    if len(bn_paths) != n:
      raise ValueError(f"ofd needs one teacher BatchNorm path per tap pair ({n}), got {bn_paths}")
    margins = ofd_margins_from_model(teacher_model, bn_paths)
  # jnp, not np: a teacher built shape-only (the run layer's preflight) gives traced margins.
  margins = tuple(jnp.asarray(m, jnp.float32) for m in margins)
  if len(margins) != n:
    raise ValueError(f"ofd got {len(margins)} margins for {n} tap pairs")

  def read(student_out, teacher_out):
    s_list, t_list = _read(student_out, s_keys, "student"), _read(teacher_out, t_keys, "teacher")
    pooled = []
    for sk, tk, s_i, t_i in zip(s_keys, t_keys, s_list, t_list):
      if s_i.ndim != t_i.ndim or any(a > b for a, b in zip(s_i.shape[1:-1], t_i.shape[1:-1])):
        raise ValueError(f"ofd pools the teacher's map to the student's resolution, but the "
                         f"student tap {sk!r} has shape {s_i.shape} and the teacher tap {tk!r} "
                         f"{t_i.shape}; pair each student map with a teacher map at least as "
                         "large")
      pooled.append(losses.adaptive_avg_pool(t_i, s_i.shape[1:-1]))
    return s_list, pooled

  def init(rng, student_out, teacher_out, batch):
    del batch
    s_list, t_list = read(student_out, teacher_out)
    return _connector_params(rng, s_list, t_list, range(n)), {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step, axis_name
    s_list, t_list = read(student_out, teacher_out)
    total = jnp.zeros((), jnp.float32)
    for i, (s_i, t_i) in enumerate(zip(s_list, t_list)):
      value = losses.ofd(_connect(params, i, s_i, t_i), t_i, margins[i])
      total = total + masked_mean(value, batch, mask_key) / 2.0**(n - i - 1)
    return total, state, {}

  return Term(init, apply, Needs(student=taps_of(s_keys), teacher=taps_of(t_keys)))


# SRD -------------------------------------------------------------------------------------------


def dense_head_from_model(teacher_model, path: str = "head") -> Callable[[jax.Array], jax.Array]:
  """The teacher's linear classifier at ``path`` (``kernel``, ``bias``) as a function, frozen."""
  head = _params_at(teacher_model.params, path)
  if not isinstance(head, Mapping) or "kernel" not in head:
    raise ValueError(f"srd runs the student's features through the teacher's classifier, but the "
                     f"teacher has no dense layer at {path!r}; pass teacher_head_path=... or "
                     "teacher_head=(a function features -> logits)")
  # jnp, not np: a teacher built shape-only (the run layer's preflight) has traced parameters.
  kernel = jax.lax.stop_gradient(jnp.asarray(head["kernel"], jnp.float32))
  bias = (jax.lax.stop_gradient(jnp.asarray(head["bias"], jnp.float32)) if "bias" in head
          else jnp.zeros(kernel.shape[-1], jnp.float32))

  def apply_head(x):
    return x.astype(jnp.float32) @ kernel + bias[None, :]

  return apply_head


SRD_BN_EPS = 1e-4  # The authors' BatchNorm1d(eps=1e-4, affine=False) on both sides' features.


def _batch_norm(x: jax.Array, eps: float) -> jax.Array:
  """BatchNorm without affine parameters on the batch's own statistics (biased variance)."""
  mean = jnp.mean(x, axis=0, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=0, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + jnp.float32(eps))


def srd(*, student: Key = "pre_logits", teacher: Key = "pre_logits", teacher_model: Any = None,
        teacher_head: Callable[[jax.Array], jax.Array] | None = None,
        teacher_head_path: str = "head", head: str = "student", exponent: float = 4.0,
        temperature: float = 1.0, normalize: bool = True) -> Term:
  """SRD (Miles & Mikolajczyk 2024): projected student features vs the teacher's, plus KL on
  logits, batch-level.

  ``params['projector']`` (a linear layer with bias) maps the student's features (``student``
  tap, flattened) to the teacher's width; with ``normalize`` both the projected student features
  and the teacher's go through BatchNorm without affine parameters on the (global) batch's
  statistics, eps ``1e-4``; then :func:`kdjax.losses.srd` with ``exponent`` (4) and
  ``temperature``. These are the authors' defaults, and torchdistill's ``SRDLoss`` with its
  SRD model wrapper. The KL term compares the student's own logits with the teacher's
  (``head='student'``); ``head='teacher'`` instead runs the projected student features through
  the teacher's frozen classifier (``teacher_head``, or the dense layer at
  ``teacher_head_path`` of ``teacher_model``), a variant the paper discusses. ``normalize=False``
  and ``exponent=1`` give torchdistill's ``SRDLoss`` on raw projected features.

  References:
    R. Miles, K. Mikolajczyk, "Understanding the Role of the Projector in Knowledge
    Distillation", AAAI 2024.
  """
  if head not in ("teacher", "student"):
    raise ValueError(f"head must be 'student' (the student's own logits) or 'teacher' (the "
                     f"projected features through the teacher's classifier), got {head!r}")
  if head == "teacher" and teacher_head is None:
    if teacher_model is None:
      raise ValueError("srd with head='teacher' needs the teacher's classifier: pass "
                       "teacher_model=(the trained teacher) or teacher_head=(features -> logits)")
    teacher_head = dense_head_from_model(teacher_model, teacher_head_path)

  def arrays(student_out, teacher_out):
    s = select(student_out, student, side="student")
    t = select(teacher_out, teacher, side="teacher")
    return s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)

  def proj(t):
    return _adapters.make_projector("linear", t.shape[-1])

  def init(rng, student_out, teacher_out, batch):
    del batch
    s, t = arrays(student_out, teacher_out)
    return {"projector": _adapters.init_projector(rng, proj(t), s)}, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del batch, step
    s, t = arrays(student_out, teacher_out)
    f_s = proj(t).apply({"params": params["projector"]}, s)
    z_s = teacher_head(f_s) if head == "teacher" else student_out.logits
    z_t = teacher_out.logits
    f_s, t, z_s, z_t = (gather_batch(a, axis_name) for a in (f_s, t, z_s, z_t))
    if normalize:
      f_s = _batch_norm(f_s.astype(jnp.float32), SRD_BN_EPS)
      t = _batch_norm(t.astype(jnp.float32), SRD_BN_EPS)
    value = losses.srd(f_s, t, z_s, z_t, exponent=exponent, temperature=temperature)
    return value, state, {}

  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher)))


# MLKD ------------------------------------------------------------------------------------------


def mlkd(*, temperatures: Sequence[float] = MLKD_TEMPERATURES,
         standardize: bool = False, exact_reference: bool = True, views: int = 2) -> Term:
  """Multi-level logit distillation (Jin et al. 2023) on the logits, batch-level.

  ``views=2``: each (per-device) batch holds the weak view of its examples in its first half and
  the strong view of the same examples, in the same order, in its second half; the data pipeline
  must produce that layout (the cross-entropy term then covers both views, as in the reference).
  ``views=1``: one view, used as both (no strong augmentation). See :func:`kdjax.losses.mlkd`.
  """
  if views not in (1, 2):
    raise ValueError(f"views must be 1 or 2, got {views}")

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, batch, step
    zs, zt = student_out.logits, select(teacher_out, "logits", side="teacher")
    if views == 2:
      if zs.shape[0] % 2:
        raise ValueError(f"mlkd with views=2 needs an even batch [weak; strong], got "
                         f"{zs.shape[0]} examples")
      h = zs.shape[0] // 2
      parts = (zs[:h], zt[:h], zs[h:], zt[h:])
    else:
      parts = (zs, zt, zs, zt)
    parts = tuple(gather_batch(a, axis_name) for a in parts)
    value = losses.mlkd(*parts, temperatures=temperatures, standardize=standardize,
                        exact_reference=exact_reference)
    return value, state, {}

  return Term(no_params_init, apply, Needs())


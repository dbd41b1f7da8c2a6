"""Contrastive representation distillation (CRD) as an objective term with memory banks.

Everything CRD keeps between steps lives in the term's ``state`` (two memory banks, the NCE
normalisation constants, a PRNG key), and its two embeddings are the term's ``params``; the
step threads both, so the term is two pure functions like every other term.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.objectives import _adapters
from kdjax.objectives._base import Needs, Term, gather_batch, masked_mean, select, taps_of

Key = str | Callable[[Any], jax.Array]
CONTRASTS = ("nce", "softmax")
NEGATIVES = ("uniform", "other_class")
REJECTION_ROUNDS = 8  # redraws of same-class negatives when the labels are learned online


def _normalize(x: jax.Array) -> jax.Array:
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.float32(1e-24)))


def momentum_update(bank: jax.Array, indices: jax.Array, values: jax.Array,
                    momentum: float) -> jax.Array:
  """``bank[i] <- normalize(momentum * bank[i] + (1 - momentum) * v)`` at ``indices``.

  Out-of-range indices (e.g. ``bank.shape[0]`` for padded examples) are dropped; indices should
  be unique within a batch. The arithmetic is float32; the result keeps ``bank``'s dtype.
  """
  rows = jnp.take(bank, indices, axis=0, mode="clip").astype(jnp.float32)
  new = _normalize(momentum * rows + (1.0 - momentum) * values.astype(jnp.float32))
  return bank.at[indices].set(new.astype(bank.dtype), mode="drop")


def _key_data(key: jax.Array) -> jax.Array:
  """Raw ``uint32`` key data (plain arrays checkpoint anywhere); accepts typed or raw keys."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def _log_mean_exp(x: jax.Array, axis_name: str | None) -> jax.Array:
  """``log mean exp(x)`` over all entries (and over devices, which hold equal shares)."""
  m = jax.lax.stop_gradient(jnp.max(x))
  if axis_name is not None:
    m = jax.lax.pmax(m, axis_name)
  mean = jnp.mean(jnp.exp(x - m))
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  return m + jnp.log(mean)


def crd(*, num_data: int, feat_dim: int = 128, num_negatives: int = 4096,
        nce_temperature: float = 0.07, momentum: float = 0.5, student: Key = "pre_logits",
        teacher: Key = "pre_logits", contrast: str = "nce", bank_dtype: Any = jnp.float32,
        index_key: str = "index", mask_key: str | None = "mask", negatives: str = "uniform",
        labels: Any = None, label_key: str = "label") -> Term:
  r"""Contrastive representation distillation (Tian et al. 2020) with two memory banks.

  Student and teacher features are flattened and mapped by trainable linear embeddings to
  unit vectors :math:`v_s, v_t \in \mathbb{R}^{d}` (``params['embed_student']``,
  ``params['embed_teacher']``). Two memory banks :math:`M_s, M_t \in \mathbb{R}^{N \times d}`
  (``state['memory_student']``, ``state['memory_teacher']``) hold one embedding per training
  example, addressed by the dataset index ``batch[index_key]``. For each example the positive is
  its own row and ``K`` negatives are rows drawn, with a key derived from ``(state['key'], step)``,
  uniformly from the other ``N - 1`` examples (``negatives='uniform'``) or from the examples of
  other classes (``negatives='other_class'``, the reference's CIFAR-100 protocol: RepDistiller's
  ``CIFAR100InstanceSample`` with ``mode='exact'``, 16384 negatives, with replacement). The student embedding is contrasted against the
  teacher bank and the teacher embedding against the student bank:

  .. math::
    L = \ell(v_s \cdot M_t[\mathrm{idx}] / \tau) + \ell(v_t \cdot M_s[\mathrm{idx}] / \tau)

  ``contrast='nce'`` (the default) is the paper's contrast-memory NCE loss
  (:func:`kdjax.losses.nce_loss`), with the normalisation constant :math:`Z = N \cdot \mathrm{mean}(\exp(s / \tau))` estimated
  once, on the first batch, and then held in ``state`` (one per direction) as in the reference
  implementation. ``contrast='softmax'`` is the simpler InfoNCE variant: cross-entropy of the
  positive among the ``1 + K`` candidates. After the loss, the banks' rows at the batch indices
  move towards the new (stopped-gradient) embeddings:
  ``m <- normalize(momentum * m + (1 - momentum) * v)``. Under ``pmap`` the indices and
  embeddings are gathered across devices first, so every replica applies the same update and
  the banks stay identical; negatives are drawn for the global batch, so ``pmap`` and ``jit``
  contrast against the same rows.

  Memory: the banks hold ``2 * num_data * feat_dim`` numbers (``bank_dtype=jnp.bfloat16``
  halves their bytes; arithmetic stays float32); each step gathers ``2 * B * (1 + K) * feat_dim``.

  Args:
    num_data: the number of training examples ``N``; ``batch[index_key]`` must be in
      ``[0, N)`` and unique within a global batch.
    feat_dim: the embedding width ``d``.
    num_negatives: negatives per example ``K``; capped at ``num_data - 1``.
    nce_temperature: :math:`\tau`.
    momentum: the memory update's momentum, in ``[0, 1)``.
    student, teacher: the features to read (tap paths, ``'logits'`` or callables).
    contrast: ``'nce'`` or ``'softmax'``.
    bank_dtype: the banks' storage dtype.
    index_key: the batch entry holding each example's dataset index.
    mask_key: the batch entry marking real examples; padded ones neither count in the loss nor
      update the banks.
    negatives: ``'uniform'`` or ``'other_class'``.
    labels: for ``'other_class'``, the class of every training example by dataset index
      (``[N]`` integers): negatives are then drawn exactly from the other classes. Without it the
      term learns the labels as it sees them (``state['labels']``, -1 until an example has been
      in a batch, from ``batch[label_key]``) and redraws a negative of the anchor's class up to
      8 times; from the second epoch on every label is known and a same-class negative survives
      with probability ``(n_c / N)^9`` (1e-18 on CIFAR-100). During the first epoch examples not
      yet seen count as other-class.
    label_key: the batch entry holding integer labels (``'other_class'`` without ``labels``).

  Returns:
    A term; its metrics hold ``student_loss`` and ``teacher_loss`` (the two directions).

  References:
    Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020.
  """
  num_data = int(num_data)
  if num_data < 2:
    raise ValueError(f"num_data must be >= 2 (the size of the training set), got {num_data}")
  k = min(int(num_negatives), num_data - 1)
  if k < 1:
    raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  if not nce_temperature > 0:
    raise ValueError(f"nce_temperature must be > 0, got {nce_temperature}")
  if contrast not in CONTRASTS:
    raise ValueError(f"contrast={contrast!r} is not one of {CONTRASTS}")
  if negatives not in NEGATIVES:
    raise ValueError(f"negatives={negatives!r} is not one of {NEGATIVES}")
  sampler = None
  if negatives == "other_class" and labels is not None:
    sampler = _OtherClassSampler(labels, num_data)
  learn_labels = negatives == "other_class" and labels is None
  projector = _adapters.make_projector("linear", feat_dim)
  inv_tau = 1.0 / float(nce_temperature)
  log_n = math.log(num_data)

  def features(student_out, teacher_out):
    s = select(student_out, student, side="student")
    t = select(teacher_out, teacher, side="teacher")
    return s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)

  def init(rng, student_out, teacher_out, batch):
    del batch
    s, t = features(student_out, teacher_out)
    k_s, k_t, k_ms, k_mt, k_neg = jax.random.split(rng, 5)
    params = {"embed_student": _adapters.init_projector(k_s, projector, s),
              "embed_teacher": _adapters.init_projector(k_t, projector, t)}
    stdv = 1.0 / math.sqrt(feat_dim / 3.0)

    def bank(key):
      return jax.random.uniform(key, (num_data, feat_dim), jnp.float32, -stdv,
                                stdv).astype(bank_dtype)

    state = {"memory_student": bank(k_ms), "memory_teacher": bank(k_mt),
             "key": _key_data(k_neg)}
    if learn_labels:
      state["labels"] = jnp.full((num_data,), -1, jnp.int32)
    if contrast == "nce":
      state["log_z"] = jnp.zeros((2,), jnp.float32)
      state["z_ready"] = jnp.zeros((), jnp.bool_)
    return params, state

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    if index_key not in batch:
      raise ValueError(f"crd needs each example's dataset index in batch[{index_key!r}] (the "
                       f"batch has {sorted(batch)}); kdjax.data iterators provide 'index'")
    s, t = features(student_out, teacher_out)
    v_s = _normalize(projector.apply({"params": params["embed_student"]}, s))
    v_t = _normalize(projector.apply({"params": params["embed_teacher"]},
                                     jax.lax.stop_gradient(t)))
    idx = batch[index_key].astype(jnp.int32)
    local_b = idx.shape[0]
    idx_all = gather_batch(idx, axis_name)

    # Negatives for the global batch, then this device's rows: jit and pmap draw the same.
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step)
    new_state = dict(state)
    if sampler is not None:
      neg = sampler.draw(key, idx_all, k)
    else:
      neg = _uniform_negatives(key, idx_all, k, num_data)
    if learn_labels:
      if label_key not in batch:
        raise ValueError(f"crd(negatives='other_class') without labels= learns each example's "
                         f"class from batch[{label_key!r}], which the batch lacks (it has "
                         f"{sorted(batch)}); pass labels=(the training labels) or label_key=...")
      y_all = gather_batch(batch[label_key].astype(jnp.int32), axis_name)
      write = gather_batch(_write_indices(idx, batch, mask_key, num_data), axis_name)
      bank_labels = state["labels"].at[write].set(y_all, mode="drop")
      new_state["labels"] = bank_labels
      for r in range(REJECTION_ROUNDS):
        same = jnp.take(bank_labels, neg, axis=0) == y_all[:, None]
        redraw = _uniform_negatives(jax.random.fold_in(key, r + 1), idx_all, k, num_data)
        neg = jnp.where(same, redraw, neg)
    if axis_name is not None:
      start = jax.lax.axis_index(axis_name) * local_b
      neg = jax.lax.dynamic_slice_in_dim(neg, start, local_b, axis=0)
    contrast_idx = jnp.concatenate([idx[:, None], neg], axis=1)  # [B, 1 + K]

    def scores(bank, v):
      rows = jnp.take(bank, contrast_idx, axis=0).astype(jnp.float32)  # [B, 1 + K, d]
      return jnp.einsum("bkd,bd->bk", rows, v) * inv_tau

    s_scores = scores(state["memory_teacher"], v_s)  # student vs teacher memory
    t_scores = scores(state["memory_student"], v_t)  # teacher vs student memory
    if contrast == "nce":
      estimate = jnp.stack([_log_mean_exp(s_scores, axis_name),
                            _log_mean_exp(t_scores, axis_name)]) + jnp.float32(log_n)
      log_z = jnp.where(state["z_ready"], state["log_z"], jax.lax.stop_gradient(estimate))
      s_loss = losses.nce_loss(s_scores, log_z[0], num_data)
      t_loss = losses.nce_loss(t_scores, log_z[1], num_data)
      new_state["log_z"] = log_z
      new_state["z_ready"] = jnp.ones((), jnp.bool_)
    else:
      s_loss = jax.nn.logsumexp(s_scores, axis=-1) - s_scores[:, 0]
      t_loss = jax.nn.logsumexp(t_scores, axis=-1) - t_scores[:, 0]
    s_loss = masked_mean(s_loss, batch, mask_key)
    t_loss = masked_mean(t_loss, batch, mask_key)

    # Memory update over the global batch; padded examples write nowhere (index N is dropped).
    write_idx = gather_batch(_write_indices(idx, batch, mask_key, num_data), axis_name)
    for bank_key, v in (("memory_student", v_s), ("memory_teacher", v_t)):
      v_all = gather_batch(jax.lax.stop_gradient(v), axis_name)
      new_state[bank_key] = momentum_update(state[bank_key], write_idx, v_all, momentum)
    return s_loss + t_loss, new_state, {"student_loss": s_loss, "teacher_loss": t_loss}

  batch_needs = (index_key, label_key) if learn_labels else (index_key,)
  return Term(init, apply, Needs(student=taps_of(student), teacher=taps_of(teacher),
                                 batch=batch_needs))


def _write_indices(idx: jax.Array, batch, mask_key: str | None, num_data: int) -> jax.Array:
  """Batch indices, with padded examples sent to ``num_data`` (dropped by scatters)."""
  mask = batch.get(mask_key) if mask_key else None
  if mask is not None and mask.shape == idx.shape:
    return jnp.where(mask.astype(jnp.bool_), idx, jnp.int32(num_data))
  return idx


def _uniform_negatives(key: jax.Array, idx: jax.Array, k: int, num_data: int) -> jax.Array:
  """``[B, K]`` rows drawn uniformly from the ``N - 1`` examples other than each anchor."""
  neg = jax.random.randint(key, (idx.shape[0], k), 0, num_data - 1, jnp.int32)
  return neg + (neg >= idx[:, None]).astype(jnp.int32)  # skips the positive


class _OtherClassSampler:
  """Exact draws from the examples of the other classes, from the training labels.

  The examples sorted by class make each class a contiguous block ``[start_c, start_c + n_c)``;
  a draw ``r`` uniform in ``[0, N - n_c)`` that skips the anchor's block is a uniform draw from
  the other classes.
  """

  def __init__(self, labels, num_data: int):
    labels = np.asarray(labels)
    if labels.shape != (num_data,) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must hold the integer class of each of the {num_data} training "
                       f"examples (shape [{num_data}]), got dtype {labels.dtype} and shape "
                       f"{labels.shape}")
    if labels.min() < 0:
      raise ValueError("labels must be non-negative class indices")
    counts = np.bincount(labels)
    if np.any(counts == num_data):
      raise ValueError("negatives='other_class' needs at least two classes in the labels")
    self.order = np.argsort(labels, kind="stable").astype(np.int32)
    self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    self.count = counts.astype(np.int32)
    self.labels = labels.astype(np.int32)
    self.num_data = num_data

  def draw(self, key: jax.Array, idx: jax.Array, k: int) -> jax.Array:
    y = jnp.asarray(self.labels)[idx]
    start, count = jnp.asarray(self.start)[y], jnp.asarray(self.count)[y]
    r = jax.random.randint(key, (idx.shape[0], k), 0, (self.num_data - count)[:, None], jnp.int32)
    r = r + jnp.where(r >= start[:, None], count[:, None], jnp.zeros((), jnp.int32))
    return jnp.asarray(self.order)[r]

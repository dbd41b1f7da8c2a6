"""Terms for dense prediction: segmentation maps and point-based detectors.

Segmentation terms read ``[B, H, W, C]`` logits (and, for ``pixel_kd``, the ``[B, H, W]`` label
map in ``batch['label']``). Detection terms read a :class:`kdjax.models.zoo.PointDetector`'s
heatmap logits and its ``box_logits`` tap (``[B, h, w, 4, n_bins]``), and the ground truth as
``batch['boxes']`` (``[B, max_boxes, 4]`` pixels) and ``batch['box_classes']`` (``[B,
max_boxes]``, ``-1`` for padding). Per-example values are reduced with the one masked mean over
``batch['mask']`` (padded evaluation examples), like every other term.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _utils as loss_utils
from kdjax.objectives import _adapters
from kdjax.objectives._base import Needs, Term, masked_mean, no_params_init, select
from kdjax.objectives._terms import Key, batch_entry, from_loss


def _mask(batch) -> jax.Array | None:
  return batch.get("mask") if isinstance(batch, Mapping) else None


# Segmentation --------------------------------------------------------------------------------


def pixel_kd(*, temperature: float = 1.0, ignore_label: int = 255,
             label_key: str | None = None) -> Term:
  """Pixel-wise KD (:func:`kdjax.losses.pixel_kd`) on segmentation logits.

  ``label_key`` names the batch's ``[B, H, W]`` label map whose ``ignore_label`` pixels are left
  out; ``None`` distils every pixel.
  """
  if label_key is None:
    return from_loss(losses.pixel_kd, temperature=temperature, ignore_label=None)
  return from_loss(losses.pixel_kd, labels=True, label_key=label_key, temperature=temperature,
                   ignore_label=ignore_label)


def channel_wise_distillation(*, temperature: float = 4.0, student: Key = "logits",
                              teacher: Key = "logits", adapter: str | None = None) -> Term:
  """Channel-wise distillation (Shu et al. 2021) of logits, or of tapped feature maps through a
  trainable ``adapter`` (``'linear'``: a 1x1 convolution to the teacher's channels)."""
  return from_loss(losses.channel_wise_distillation, student=student, teacher=teacher,
                   adapter=adapter, temperature=temperature)


def pairwise_similarity_distillation(*, student: Key, teacher: Key,
                                     nodes: Sequence[int] | None = None) -> Term:
  """Pair-wise similarity distillation (Liu et al. 2019) between two tapped feature maps."""
  return from_loss(losses.pairwise_similarity_distillation, student=student, teacher=teacher,
                   nodes=None if nodes is None else tuple(nodes))


# Detection -----------------------------------------------------------------------------------


def _targets(batch, logits: jax.Array, box_logits: jax.Array, stride: float, box_key: str,
             class_key: str):
  boxes = batch_entry(batch, box_key, "ground-truth boxes [B, max_boxes, 4]")
  classes = batch_entry(batch, class_key, "box classes [B, max_boxes] (-1: padding)")
  return losses.point_targets(boxes, classes, grid=logits.shape[1:3], stride=stride,
                              num_classes=logits.shape[-1], n_bins=box_logits.shape[-1])


def point_detection(*, stride: float = 4.0, box_weight: float = 1.0, box_tap: str = "box_logits",
                    box_key: str = "boxes", class_key: str = "box_classes") -> Term:
  """The supervised loss of a point detector: heatmap focal loss + ``box_weight`` x DFL.

  Targets come from the batch's boxes (:func:`kdjax.losses.point_targets`); the metrics hold
  the two parts as ``heatmap`` and ``box``.
  """

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, teacher_out, step, axis_name
    logits = select(student_out, "logits", side="student")
    box_logits = select(student_out, box_tap, side="student")
    heatmap, edges, weight = _targets(batch, logits, box_logits, stride, box_key, class_key)
    mask = _mask(batch)
    focal = masked_mean(losses.heatmap_focal_loss(logits, heatmap), mask)
    box = masked_mean(losses.distribution_focal_loss(box_logits, edges, weight), mask)
    return focal + box_weight * box, state, {"heatmap": focal, "box": box}

  return Term(no_params_init, apply, Needs(student=(box_tap,), batch=(box_key, class_key),
                                           teacher_outputs=False))


def heatmap_kd(*, temperature: float = 1.0) -> Term:
  """Soft-label heatmap KD weighted by the teacher's confidence (:func:`kdjax.losses.heatmap_kd`)."""
  return from_loss(losses.heatmap_kd, temperature=temperature)


def localization_distillation(*, temperature: float = 10.0, box_tap: str = "box_logits") -> Term:
  """Localization distillation (Zheng et al. 2022) of box-edge distributions, each cell weighted
  by the teacher's confidence (:func:`kdjax.losses.teacher_confidence`)."""
  loss_utils.check_temperature(temperature)

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, step, axis_name
    s = select(student_out, box_tap, side="student")
    t = select(teacher_out, box_tap, side="teacher")
    weights = losses.teacher_confidence(select(teacher_out, "logits", side="teacher"))
    loss = losses.localization_distillation(s, t, jax.lax.stop_gradient(weights),
                                            temperature=temperature)
    return masked_mean(loss, _mask(batch)), state, {}

  return Term(no_params_init, apply, Needs(student=(box_tap,), teacher=(box_tap,)))


def feature_imitation(*, student: str = "pre_logits", teacher: str = "pre_logits",
                      stride: float = 4.0, anchor_sizes: Sequence[float] = (8.0, 16.0),
                      psi: float = 0.5, adapter: str = "linear", box_key: str = "boxes",
                      class_key: str = "box_classes") -> Term:
  """Fine-grained feature imitation (Wang et al. 2019) of a tapped map near the objects.

  The imitation mask comes from the batch's boxes and square anchors of ``anchor_sizes`` on the
  tapped map's grid of ``stride`` pixels (:func:`kdjax.losses.imitation_mask`); ``adapter``
  (``'linear'``: a 1x1 convolution) maps the student's channels to the teacher's and is trained
  with the student.
  """
  if not 0.0 < psi < 1.0:
    raise ValueError(f"feature_imitation psi must be in (0, 1), got {psi}; the paper uses 0.5")
  if not anchor_sizes or min(anchor_sizes) <= 0 or stride <= 0:
    raise ValueError(f"feature_imitation needs positive anchor_sizes and stride (pixels), got "
                     f"anchor_sizes={anchor_sizes}, stride={stride}")

  def init(rng, student_out, teacher_out, batch):
    del batch
    s = select(student_out, student, side="student")
    t = select(teacher_out, teacher, side="teacher")
    proj = _adapters.make_projector(adapter, t.shape[-1])
    return {"adapter": _adapters.init_projector(rng, proj, s)}, {}

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del step, axis_name
    s = select(student_out, student, side="student")
    t = select(teacher_out, teacher, side="teacher")
    proj = _adapters.make_projector(adapter, t.shape[-1])
    s = proj.apply({"params": params["adapter"]}, s)
    boxes = batch_entry(batch, box_key, "ground-truth boxes [B, max_boxes, 4]")
    classes = batch_entry(batch, class_key, "box classes [B, max_boxes] (-1: padding)")
    mask = losses.imitation_mask(boxes, classes >= 0, grid=t.shape[1:3], stride=stride,
                                 anchor_sizes=anchor_sizes, psi=psi)
    loss = losses.feature_imitation(s, t, mask)
    return masked_mean(loss, _mask(batch)), state, {"region": jnp.mean(mask)}

  return Term(init, apply, Needs(student=(student,), teacher=(teacher,),
                                 batch=(box_key, class_key)))


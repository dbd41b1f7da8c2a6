"""Small dense-prediction models: an encoder-decoder segmenter and a point-based detector.

Both are sized for the digit canvases of :mod:`kdjax.data` (``seg_digits``, ``det_digits``) and a
CPU, with a ``width`` that makes a teacher (wide) and a student (narrow) of one family. Like the
rest of the zoo they compute in ``dtype``, keep float32 parameters, return float32 outputs and
name their stages so features can be tapped.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.losses import _dense as dense_losses
from kdjax.models.zoo import _layers


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of ``[B, H, W, C]``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _head(module: nn.Module, x: jax.Array, features: int, *, name: str,
          bias_init: Any = nn.initializers.zeros) -> jax.Array:
  """A float32 1x1 convolution, the output layer of a dense head."""
  return nn.Conv(features, (1, 1), dtype=jnp.float32, param_dtype=_layers.PARAM_DTYPE,
                 bias_init=bias_init, name=name)(x.astype(jnp.float32))


def _stem(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
  """``module``'s full-resolution ``stem`` (conv-BN-ReLU, ``width``) on images whose H and W are
  multiples of 4, as both models downsample twice by 2."""
  if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
    raise ValueError(f"{type(module).__name__} takes images [batch, H, W, C] with H and W "
                     f"multiples of 4, got shape {x.shape}")
  return _layers.ConvBNReLU(module.width, name="stem", dtype=module.dtype,
                            bn_axis_name=module.bn_axis_name)(x.astype(module.dtype), train)


class SegmentationUNet(_layers.ConvNet):
  """A two-level U-Net: per-pixel class logits ``[B, H, W, num_classes]`` at the input resolution.

  ``stem`` (conv-BN-ReLU, ``width``, full resolution), ``stage1`` (2x2 max pool, conv-BN-ReLU,
  2 x ``width``, 1/2), ``stage2`` (2x2 max pool, conv-BN-ReLU x 2, 4 x ``width``, 1/4),
  ``decoder2`` (upsample, concatenate ``stage1``, conv-BN-ReLU, 2 x ``width``, 1/2),
  ``decoder1`` (upsample, concatenate ``stem``, conv-BN-ReLU, ``width``, full resolution), then a
  1x1 ``head``. H and W must be multiples of 4. Taps: those five stages (``[B, H', W', C]``);
  ``pre_logits`` is ``decoder1``'s output, sown.

  References:
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015.
  """

  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s0 = _stem(self, x, train)
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    w = self.width
    s1 = _layers.ConvBNReLU(2 * w, name="stage1", **kw)(_pool(s0), train)
    s2 = _DoubleConv(4 * w, name="stage2", **kw)(_pool(s1), train)
    d2 = _layers.ConvBNReLU(2 * w, name="decoder2", **kw)(
        jnp.concatenate([_upsample2(s2), s1], axis=-1), train)
    d1 = _layers.ConvBNReLU(w, name="decoder1", **kw)(
        jnp.concatenate([_upsample2(d2), s0], axis=-1), train)
    self.sow("intermediates", "pre_logits", d1)
    return _head(self, d1, self.num_classes, name="head")


def _pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class _DoubleConv(_layers.ConvBlock):

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(self.features, name="conv_0", **kw)(x, train)
    return _layers.ConvBNReLU(self.features, name="conv_1", **kw)(x, train)


# A class prior of 0.1 at initialisation, so the many background cells start near their target.
_PRIOR_BIAS = -2.19


class PointDetector(_layers.ConvNet):
  """A single-stage, anchor-free detector on a grid of stride 4 (CenterNet / FCOS style).

  ``stem`` (conv-BN-ReLU, ``width``, full resolution), ``stage1`` (conv-BN-ReLU stride 2,
  2 x ``width``), ``stage2`` (conv-BN-ReLU stride 2, then conv-BN-ReLU, 4 x ``width``, 1/4),
  ``neck`` (``stage2`` concatenated with the max-pooled ``stage1``: conv-BN-ReLU, 4 x ``width``,
  1/4), then two heads on the neck: ``cls_head`` (conv-ReLU, 1x1: class heatmap logits,
  one sigmoid per class) and ``box_head`` (conv-ReLU, 1x1: for each cell, logits over
  ``n_bins`` distances, in cells, to each of the 4 box edges).

  Returns the heatmap logits ``[B, H/4, W/4, num_classes]`` (float32) as the logits and sows
  ``box_logits`` ``[B, H/4, W/4, 4, n_bins]`` (float32) and ``pre_logits`` (the neck). Taps:
  ``stem``, ``stage1``, ``stage2``, ``neck``, ``box_logits``, ``pre_logits``. Boxes come from
  :func:`decode_detections`; training targets from :func:`kdjax.losses.point_targets`.

  References:
    X. Zhou, D. Wang, P. Kraehenbuehl, "Objects as Points", 2019; Z. Tian, C. Shen, H. Chen,
    T. He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019; X. Li et al.,
    "Generalized Focal Loss", NeurIPS 2020 (edge distributions).
  """

  num_classes: int
  width: int = 16
  n_bins: int = 8

  stride = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s0 = _stem(self, x, train)
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    w = self.width
    s1 = _layers.ConvBNReLU(2 * w, strides=2, name="stage1", **kw)(s0, train)
    s2 = _Stage2(4 * w, name="stage2", **kw)(s1, train)
    fused = jnp.concatenate([s2, _pool(s1)], axis=-1)
    neck = _layers.ConvBNReLU(4 * w, name="neck", **kw)(fused, train)
    self.sow("intermediates", "pre_logits", neck)
    cls = nn.relu(_layers.conv(4 * w, 3, use_bias=True, dtype=self.dtype, name="cls_conv")(neck))
    heatmap = _head(self, cls, self.num_classes, name="cls_head",
                    bias_init=nn.initializers.constant(_PRIOR_BIAS))
    box = nn.relu(_layers.conv(4 * w, 3, use_bias=True, dtype=self.dtype, name="box_conv")(neck))
    box_logits = _head(self, box, 4 * self.n_bins, name="box_head")
    self.sow("intermediates", "box_logits", box_logits.reshape(*box_logits.shape[:3], 4,
                                                               self.n_bins))
    return heatmap


class _Stage2(_layers.ConvBlock):

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(self.features, strides=2, name="conv_0", **kw)(x, train)
    return _layers.ConvBNReLU(self.features, name="conv_1", **kw)(x, train)


def decode_detections(heatmap_logits: jax.typing.ArrayLike,
                      box_logits: jax.typing.ArrayLike,
                      *,
                      stride: float = PointDetector.stride,
                      max_detections: int = 20) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Boxes, scores and classes from a point detector's outputs: heatmap peaks -> boxes.

  A cell and class is a peak when its probability ``sigmoid(z)`` is the largest in its 3x3
  neighbourhood (the max-pool "NMS" of CenterNet); the ``max_detections`` highest peaks become
  detections, each box spanning the expected edge distances around its cell's centre
  (:func:`kdjax.losses.edge_distances`). Jit-able; no threshold (keep low scores for mAP).

  Args:
    heatmap_logits: ``[batch, h, w, K]`` class heatmap logits (the detector's logits).
    box_logits: ``[batch, h, w, 4, n_bins]`` edge-distance logits (its ``box_logits`` tap).
    stride: pixels per cell.
    max_detections: detections per image.

  Returns:
    ``(boxes [B, D, 4] (x0, y0, x1, y1 pixels), scores [B, D], classes [B, D] int32)``, by
    decreasing score.
  """
  z = jnp.asarray(heatmap_logits, jnp.float32)
  b, h, w, k = z.shape
  if box_logits.shape[:3] != (b, h, w) or box_logits.ndim != 5:
    raise ValueError(f"box logits {box_logits.shape} do not match heatmap logits {z.shape}; "
                     "pass the same detector's outputs ([B, h, w, 4, n_bins])")
  p = jax.nn.sigmoid(z)
  peak = nn.max_pool(p, (3, 3), strides=(1, 1), padding="SAME")
  p = jnp.where(p >= peak, p, jnp.zeros((), p.dtype))
  count = min(int(max_detections), h * w * k)
  scores, flat = jax.lax.top_k(p.reshape(b, -1), count)
  cell, classes = flat // k, flat % k
  centers = dense_losses.cell_centers((h, w), stride).reshape(h * w, 2)[cell]  # [B, D, 2]
  dist = dense_losses.edge_distances(box_logits).reshape(b, h * w, 4)
  d = jnp.take_along_axis(dist, cell[..., None], axis=1) * stride  # [B, D, 4]
  boxes = jnp.concatenate([centers - d[..., :2], centers + d[..., 2:]], axis=-1)
  return boxes, scores, classes.astype(jnp.int32)


# Names of the dense models, for scripts and configs: constructors taking keyword arguments.
DENSE_MODELS = {
    "unet_small": lambda **kw: SegmentationUNet(**{"width": 16, **kw}),
    "unet_tiny": lambda **kw: SegmentationUNet(**{"width": 8, **kw}),
    "point_detector_small": lambda **kw: PointDetector(**{"width": 16, **kw}),
    "point_detector_tiny": lambda **kw: PointDetector(**{"width": 8, **kw}),
}

"""Dense-prediction losses: semantic segmentation and single-stage (point-based) detection.

Maps are channel-last. Segmentation logits are ``[B, H, W, C]`` with integer label maps
``[B, H, W]``; a detector predicts, on a grid of cells ``[B, h, w]`` of ``stride`` pixels, class
heatmap logits ``[B, h, w, K]`` (one sigmoid per class) and each cell's distances to the four box
edges as distributions over ``n_bins`` discrete values ``[B, h, w, 4, n_bins]`` (Li et al. 2020,
Generalized Focal Loss). Boxes are ``[x0, y0, x1, y1]`` in pixels, padded to a fixed count
``[B, N, 4]`` with a validity flag ``[B, N]``; cell ``(i, j)`` has its centre at pixel
``((j + 0.5) stride, (i + 0.5) stride)``. Every loss returns one value per example, ``[batch]``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses import _feature, _utils


def _check_dense_pair(student: jax.Array, teacher: jax.Array, loss: str, *,
                      same_channels: bool) -> None:
  """``[B, H, W, C]`` maps of the same batch and spatial size (and channel count if asked)."""
  for name, x in (("student", student), ("teacher", teacher)):
    if x.ndim != 4:
      raise ValueError(f"{loss} needs channel-last maps [batch, height, width, channels]; the "
                       f"{name} map has shape {x.shape}")
  _utils.check_not_empty(student.shape[:1], f"{loss} student maps")
  if student.shape[:3] != teacher.shape[:3]:
    raise ValueError(f"{loss}: the student map has shape {student.shape} but the teacher's has "
                     f"{teacher.shape}; both need the same batch and spatial size (resize one, "
                     "or tap stages of equal resolution)")
  if same_channels and student.shape[-1] != teacher.shape[-1]:
    raise ValueError(f"{loss}: the student map has {student.shape[-1]} channels but the "
                     f"teacher's has {teacher.shape[-1]}; give both models the same num_classes, "
                     "or map the student's channels onto the teacher's with an adapter")


# Segmentation --------------------------------------------------------------------------------


def pixel_kd(student_logits: jax.typing.ArrayLike,
             teacher_logits: jax.typing.ArrayLike,
             labels: jax.typing.ArrayLike | None = None,
             *,
             temperature: jax.typing.ArrayLike = 1.0,
             ignore_label: int | None = 255) -> jax.Array:
  r"""Pixel-wise knowledge distillation: the temperature-scaled KL at every kept pixel.

  .. math::
    \ell_b = \frac{1}{|V_b|} \sum_{x \in V_b} T^2\,
      \mathrm{KL}\big(p_t^T[b, x] \,\|\, p_s^T[b, x]\big),
    \qquad p^T = \mathrm{softmax}(z / T) \text{ over classes}

  where ``V_b`` are the pixels of example ``b`` whose label is not ``ignore_label`` (all pixels
  without labels).

  Args:
    student_logits: student logits, shape ``[batch, H, W, classes]``.
    teacher_logits: teacher logits, same shape.
    labels: optional integer label map ``[batch, H, W]``; pixels equal to ``ignore_label`` are
      left out (their logits may hold anything, even NaN).
    temperature: softmax temperature ``T > 0``.
    ignore_label: the label value of pixels to leave out; ``None`` keeps every pixel.

  Returns:
    Per-example loss, shape ``[batch]``, float32; 0 for an example with no kept pixel.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.zeros((1, 2, 2, 3))
    >>> losses.pixel_kd(z, z, temperature=2.0)
    Array([0.], dtype=float32)

  References:
    Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019 (pixel-wise distillation); G. Hinton, O. Vinyals, J. Dean,
    "Distilling the Knowledge in a Neural Network", 2015 (the ``T^2`` scaling).

  Convention: forward KL(teacher || student) per pixel, scaled by T^2 like
  :func:`kdjax.losses.kd`, averaged over the example's kept pixels.
  """
  s, t = _utils.as_float(student_logits, teacher_logits, what="logits")
  _check_dense_pair(s, t, "pixel_kd", same_channels=True)
  _utils.check_temperature(temperature)
  if labels is None or ignore_label is None:
    keep = jnp.ones(s.shape[:3], bool)
  else:
    labels = jnp.asarray(labels)
    if labels.shape != s.shape[:3] or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"pixel_kd labels must be an integer map of shape {s.shape[:3]} (the "
                       f"logits' [batch, H, W]), got {labels.dtype} {labels.shape}")
    keep = labels != ignore_label
  s, t = _utils.mask_inputs(keep, s, t)
  temp = jnp.asarray(temperature, s.dtype)
  kl = _utils.kl_from_log_probs(_utils.log_softmax(t, temp), _utils.log_softmax(s, temp))
  kl = jnp.where(keep, temp**2 * kl, jnp.zeros((), s.dtype))
  count = jnp.sum(keep.astype(s.dtype), axis=(1, 2))
  return jnp.sum(kl, axis=(1, 2)) / jnp.maximum(count, jnp.ones((), s.dtype))


def channel_wise_distillation(student_map: jax.typing.ArrayLike,
                              teacher_map: jax.typing.ArrayLike,
                              *,
                              temperature: jax.typing.ArrayLike = 4.0) -> jax.Array:
  r"""Channel-wise distillation: each channel's softmax over spatial positions, matched by KL.

  .. math::
    \phi(y)[c, x] = \frac{\exp(y[x, c] / T)}{\sum_{x'} \exp(y[x', c] / T)},\qquad
    \ell_b = \frac{T^2}{C} \sum_{c=1}^{C} \sum_{x}
      \phi(y_t)[c, x] \big(\log \phi(y_t)[c, x] - \log \phi(y_s)[c, x]\big)

  over the ``H W`` positions ``x`` of example ``b``: each channel is a distribution over where it
  fires, and the student's must match the teacher's.

  Args:
    student_map: student logits (or adapted features), shape ``[batch, H, W, C]``.
    teacher_map: teacher logits (or features), same shape.
    temperature: softmax temperature ``T > 0`` (the paper uses 4 for segmentation logits).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> y = jnp.arange(8.0).reshape(1, 2, 2, 2)
    >>> losses.channel_wise_distillation(y, y + 5.0)  # a per-channel shift changes nothing
    Array([0.], dtype=float32)

  References:
    C. Shu, Y. Liu, J. Gao, Z. Yan, C. Shen, "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021.

  Convention: forward KL(teacher || student) over positions, averaged over channels and scaled
  by ``T^2`` (the paper's eq. 3). Channel counts must agree: on features of different widths put
  an adapter on the student first.
  """
  s, t = _utils.as_float(student_map, teacher_map, what="maps")
  _check_dense_pair(s, t, "channel_wise_distillation", same_channels=True)
  _utils.check_temperature(temperature)
  temp = jnp.asarray(temperature, s.dtype)
  b, c = s.shape[0], s.shape[-1]
  # [B, C, H W]: one distribution over positions per channel.
  s = jnp.swapaxes(s.reshape(b, -1, c), 1, 2)
  t = jnp.swapaxes(t.reshape(b, -1, c), 1, 2)
  kl = _utils.kl_from_log_probs(_utils.log_softmax(t, temp), _utils.log_softmax(s, temp))
  return temp**2 * jnp.mean(kl, axis=1)


def pairwise_similarity_distillation(student_feat: jax.typing.ArrayLike,
                                     teacher_feat: jax.typing.ArrayLike,
                                     *,
                                     nodes: Sequence[int] | None = None) -> jax.Array:
  r"""Pair-wise (structured) distillation: match the cosine similarities between spatial nodes.

  .. math::
    a_{ij} = \frac{f_i^\top f_j}{\|f_i\|_2 \|f_j\|_2},\qquad
    \ell_b = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N} (a^s_{ij} - a^t_{ij})^2

  where ``f_i`` is the feature vector of node ``i``: the map is first average-pooled to
  ``nodes`` (each node aggregates a patch of pixels), giving ``N = prod(nodes)`` nodes.

  Args:
    student_feat: student features, shape ``[batch, H, W, C_s]``.
    teacher_feat: teacher features, shape ``[batch, H', W', C_t]``; channel counts may differ
      (the similarity maps are ``N x N`` either way).
    nodes: the node grid ``(h, w)``, each ``<=`` both maps' sizes; default: the smaller map's
      spatial size (one node per position).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> f = jnp.arange(1.0, 33.0).reshape(1, 4, 4, 2)
    >>> bool(losses.pairwise_similarity_distillation(f, 3.0 * f, nodes=(2, 2))[0] < 1e-10)
    True

  References:
    Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019 (pair-wise distillation).

  Convention: nodes by adaptive average pooling (:func:`kdjax.losses.adaptive_avg_pool`); a
  zero feature vector has similarity 0 to everything.
  """
  s, t = _utils.as_float(student_feat, teacher_feat, what="features")
  for name, x in (("student", s), ("teacher", t)):
    if x.ndim != 4:
      raise ValueError("pairwise_similarity_distillation needs channel-last maps [batch, H, W, "
                       f"C]; the {name} features have shape {x.shape}")
  _utils.check_same_batch(s, t, "features")
  smallest = tuple(min(a, b) for a, b in zip(s.shape[1:3], t.shape[1:3]))
  grid = smallest if nodes is None else tuple(int(n) for n in nodes)
  if len(grid) != 2 or not all(0 < g <= m for g, m in zip(grid, smallest)):
    raise ValueError(f"nodes must be (h, w) with 0 < h, w <= the smaller map's size {smallest}, "
                     f"got {nodes}")

  def similarity(f):
    f = _feature.adaptive_avg_pool(f, grid).reshape(f.shape[0], -1, f.shape[-1])
    f = _utils.l2_normalize(f, axis=-1)
    return jnp.einsum("bic,bjc->bij", f, f)

  return jnp.mean(jnp.square(similarity(s) - similarity(t)), axis=(1, 2))


# Detection: the grid, the targets, the supervised losses --------------------------------------


def cell_centers(grid: Sequence[int], stride: float, dtype=jnp.float32) -> jax.Array:
  """The pixel centres of a ``grid = (h, w)`` of cells of ``stride`` pixels: ``[h, w, 2]`` (x, y)."""
  h, w = (int(g) for g in grid)
  ys = (jnp.arange(h, dtype=dtype) + 0.5) * stride
  xs = (jnp.arange(w, dtype=dtype) + 0.5) * stride
  return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)


def edge_distances(box_logits: jax.typing.ArrayLike) -> jax.Array:
  r"""Expected distances (in cells) from each cell centre to the four box edges.

  .. math::
    d_e = \sum_{k=0}^{n-1} k\, \mathrm{softmax}(z_e)[k],\quad e \in \{\text{left, top, right,
    bottom}\}

  Args:
    box_logits: ``[..., 4, n_bins]`` edge-distance logits.

  Returns:
    ``[..., 4]`` distances in units of the stride, float32.
  """
  (z,) = _utils.as_float(box_logits, what="box logits")
  bins = jnp.arange(z.shape[-1], dtype=z.dtype).reshape((1,) * (z.ndim - 1) + (-1,))
  return jnp.sum(jax.nn.softmax(z, axis=-1) * bins, axis=-1)


def _check_boxes(boxes: jax.Array, valid: jax.Array, what: str) -> tuple[jax.Array, jax.Array]:
  boxes = jnp.asarray(boxes)
  valid = jnp.asarray(valid)
  if boxes.ndim != 3 or boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
    raise ValueError(f"{what} needs boxes [batch, max_boxes, 4] (x0, y0, x1, y1 pixels) and a "
                     f"validity flag [batch, max_boxes]; got boxes {boxes.shape} and valid "
                     f"{valid.shape}")
  (boxes,) = _utils.as_float(boxes, what="boxes")
  return boxes, valid.astype(bool)


def point_targets(boxes: jax.typing.ArrayLike,
                  classes: jax.typing.ArrayLike,
                  *,
                  grid: Sequence[int],
                  stride: float,
                  num_classes: int,
                  n_bins: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Training targets of a point-based detector from padded ground-truth boxes.

  Each box with centre ``(c_x, c_y)`` and size ``(w, h)`` owns the cell ``(i, j)`` holding its
  centre; its class heatmap is a Gaussian around that cell,

  .. math::
    g(x) = \exp\Big(-\frac{\|x - x_{ij}\|^2}{2 \sigma^2}\Big),\qquad
    \sigma = \max\big(\tfrac{\sqrt{w h}}{3},\ \tfrac{s}{2}\big)

  (``x`` a cell centre, ``s`` the stride), and the per-class target is the maximum over that
  class's boxes (exactly 1 at each box's own cell). Every cell whose centre lies inside a box
  regresses the distances to that box's edges, ``(x - x_0, y - y_0, x_1 - x, y_1 - y) / s``,
  clipped to ``[0, n_bins - 1]``, with weight ``g``; a cell inside several boxes takes the one
  with the largest ``g``; cells inside no box have weight and distances 0.

  Args:
    boxes: ``[batch, max_boxes, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels.
    classes: ``[batch, max_boxes]`` integer classes in ``[0, num_classes)``; ``-1`` marks padding.
    grid: the output grid ``(h, w)``.
    stride: pixels per cell.
    num_classes: classes of the heatmap.
    n_bins: discrete edge distances ``0 .. n_bins - 1`` (cells).

  Returns:
    ``(heatmap [B, h, w, K], edges [B, h, w, 4], weight [B, h, w])``, float32.

  References:
    X. Zhou, D. Wang, P. Kraehenbuehl, "Objects as Points", 2019 (Gaussian centre heatmaps);
    Z. Tian, C. Shen, H. Chen, T. He, "FCOS: Fully Convolutional One-Stage Object Detection",
    ICCV 2019 (distances to the four edges from locations inside the box).
  """
  classes = jnp.asarray(classes)
  if not jnp.issubdtype(classes.dtype, jnp.integer):
    raise ValueError(f"box classes must be integers (-1 for padding), got {classes.dtype}")
  boxes, valid = _check_boxes(boxes, classes >= 0, "point_targets")
  dtype = boxes.dtype
  centers = cell_centers(grid, stride, dtype)  # [h, w, 2]
  x = centers[None, None, :, :, 0]  # [1, 1, h, w]
  y = centers[None, None, :, :, 1]
  x0, y0, x1, y1 = (boxes[..., k][:, :, None, None] for k in range(4))  # [B, N, 1, 1]
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  # The box's own cell centre, so the peak is exactly 1 there.
  px = (jnp.floor(cx / stride) + 0.5) * stride
  py = (jnp.floor(cy / stride) + 0.5) * stride
  size = jnp.sqrt(jnp.maximum((x1 - x0) * (y1 - y0), jnp.zeros((), dtype)))
  sigma = jnp.maximum(size / 3.0, jnp.full((), stride / 2.0, dtype))
  g = jnp.exp(-(jnp.square(x - px) + jnp.square(y - py)) / (2.0 * jnp.square(sigma)))
  g = jnp.where(valid[:, :, None, None], g, jnp.zeros((), dtype))  # [B, N, h, w]
  onehot = jax.nn.one_hot(jnp.where(valid, classes, 0), num_classes, dtype=dtype)  # [B, N, K]
  heatmap = jnp.max(g[..., None] * onehot[:, :, None, None, :], axis=1)  # [B, h, w, K]
  inside = (x > x0) & (x < x1) & (y > y0) & (y < y1) & valid[:, :, None, None]
  score = jnp.where(inside, g, jnp.zeros((), dtype))
  owner = jnp.argmax(score, axis=1)  # [B, h, w]
  weight = jnp.max(score, axis=1)
  dist = jnp.stack([x - x0, y - y0, x1 - x, y1 - y], axis=-1) / stride  # [B, N, h, w, 4]
  edges = jnp.take_along_axis(dist, owner[:, None, :, :, None], axis=1)[:, 0]
  edges = jnp.where(weight[..., None] > 0, jnp.clip(edges, 0.0, n_bins - 1.0),
                    jnp.zeros((), dtype))
  return heatmap, edges, weight


def heatmap_focal_loss(logits: jax.typing.ArrayLike,
                       targets: jax.typing.ArrayLike,
                       *,
                       alpha: float = 2.0,
                       beta: float = 4.0) -> jax.Array:
  r"""Penalty-reduced focal loss of class heatmaps (CenterNet), normalised by the object count.

  .. math::
    \ell_b = -\frac{1}{\max(N_b, 1)} \sum_{x, k} \begin{cases}
      (1 - p)^{\alpha} \log p & y = 1 \\
      (1 - y)^{\beta} p^{\alpha} \log(1 - p) & \text{otherwise}
    \end{cases},\qquad p = \sigma(z[x, k])

  with ``N_b`` the number of cells of example ``b`` whose target is 1 (its objects).

  Args:
    logits: heatmap logits ``[batch, h, w, K]``.
    targets: Gaussian heatmap targets in ``[0, 1]``, same shape (:func:`point_targets`).
    alpha: focusing exponent (2 in the paper).
    beta: exponent of the penalty reduction near peaks (4 in the paper).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  References:
    X. Zhou, D. Wang, P. Kraehenbuehl, "Objects as Points", 2019 (eq. 1); T.-Y. Lin et al.,
    "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  z, y = _utils.as_float(logits, targets, what="heatmaps")
  if z.shape != y.shape or z.ndim != 4:
    raise ValueError(f"heatmap logits {z.shape} and targets {y.shape} must both be "
                     "[batch, h, w, classes]")
  log_p, log_1mp = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
  p = jnp.exp(log_p)
  pos = y >= 1.0
  pos_term = (1 - p)**alpha * log_p
  neg_term = (1 - y) ** beta * p**alpha * log_1mp
  total = jnp.sum(jnp.where(pos, pos_term, neg_term), axis=(1, 2, 3))
  count = jnp.sum(pos.astype(z.dtype), axis=(1, 2, 3))
  return -total / jnp.maximum(count, jnp.ones((), z.dtype))


def distribution_focal_loss(box_logits: jax.typing.ArrayLike,
                            edges: jax.typing.ArrayLike,
                            weight: jax.typing.ArrayLike) -> jax.Array:
  r"""Distribution focal loss of discretised edge distances, weighted per cell.

  .. math::
    \ell_b = \frac{1}{\max(\sum_x w_x, \epsilon)} \sum_x w_x \sum_{e=1}^{4}
      -\big((k_e + 1 - d_e) \log q_e[k_e] + (d_e - k_e) \log q_e[k_e + 1]\big)

  with ``d_e`` the target distance (in cells), ``k_e = \lfloor d_e \rfloor`` and
  ``q_e = \mathrm{softmax}(z_e)``: the two bins around the target share its probability mass.

  Args:
    box_logits: ``[batch, h, w, 4, n_bins]`` edge-distance logits.
    edges: ``[batch, h, w, 4]`` target distances in ``[0, n_bins - 1]`` (:func:`point_targets`).
    weight: ``[batch, h, w]`` non-negative cell weights (0: no box here).

  Returns:
    Per-example loss, shape ``[batch]``, float32 (0 where every weight is 0).

  References:
    X. Li, W. Wang, L. Wu, S. Chen, X. Hu, J. Li, J. Tang, J. Yang, "Generalized Focal Loss:
    Learning Qualified and Distributed Bounding Boxes for Dense Object Detection", NeurIPS 2020.
  """
  z, d, w = _utils.as_float(box_logits, edges, weight, what="box logits and targets")
  if z.ndim != 5 or z.shape[3] != 4 or d.shape != z.shape[:4] or w.shape != z.shape[:3]:
    raise ValueError(f"distribution_focal_loss needs logits [B, h, w, 4, n_bins], targets "
                     f"[B, h, w, 4] and weights [B, h, w]; got {z.shape}, {d.shape}, {w.shape}")
  n = z.shape[-1]
  d = jnp.clip(d, 0.0, n - 1.0)
  lower = jnp.clip(jnp.floor(d), 0.0, n - 2.0)
  log_q = jax.nn.log_softmax(z, axis=-1)
  k = lower.astype(jnp.int32)[..., None]
  log_lo = jnp.take_along_axis(log_q, k, axis=-1)[..., 0]
  log_hi = jnp.take_along_axis(log_q, k + 1, axis=-1)[..., 0]
  per_cell = -jnp.sum((lower + 1 - d) * log_lo + (d - lower) * log_hi, axis=-1)
  total = jnp.sum(w * per_cell, axis=(1, 2))
  return total / jnp.maximum(jnp.sum(w, axis=(1, 2)), jnp.full((), 1e-6, z.dtype))


# Detection distillation -----------------------------------------------------------------------


def teacher_confidence(teacher_heatmap_logits: jax.typing.ArrayLike) -> jax.Array:
  """A cell's teacher confidence: its largest class probability, ``max_k sigmoid(z_t[.., k])``;
  ``[B, h, w, K] -> [B, h, w]``."""
  (z,) = _utils.as_float(teacher_heatmap_logits, what="heatmap logits")
  return jnp.max(jax.nn.sigmoid(z), axis=-1)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  total = jnp.sum(weights * values, axis=(1, 2))
  return total / jnp.maximum(jnp.sum(weights, axis=(1, 2)), jnp.full((), 1e-6, values.dtype))


def _check_weights(weights, shape: tuple[int, ...], loss: str, dtype) -> jax.Array:
  (w,) = _utils.as_float(weights, what="weights")
  if w.shape != shape:
    raise ValueError(f"{loss}: weights must have the grid's shape {shape} ([batch, h, w]), got "
                     f"{w.shape}")
  return w.astype(dtype)


def heatmap_kd(student_logits: jax.typing.ArrayLike,
               teacher_logits: jax.typing.ArrayLike,
               *,
               temperature: jax.typing.ArrayLike = 1.0,
               weights: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Soft-label classification distillation of sigmoid heatmaps, weighted by teacher confidence.

  .. math::
    \ell_b = \frac{\sum_x w_x\, T^2 \sum_k \mathrm{KL}_{\mathrm{Bern}}\big(\sigma(z_t[x,k]/T)
      \,\|\, \sigma(z_s[x,k]/T)\big)}{\sum_x w_x},\qquad w_x = \max_k \sigma(z_t[x, k])

  with :math:`\mathrm{KL}_{\mathrm{Bern}}(p \| q) = p \log\frac{p}{q} + (1-p)\log\frac{1-p}{1-q}`:
  every class of every cell is a yes/no soft label, and cells where the teacher sees an object
  count most (background cells, the vast majority, would otherwise drown the signal).

  Args:
    student_logits: student heatmap logits ``[batch, h, w, K]``.
    teacher_logits: teacher heatmap logits, same shape.
    temperature: ``T > 0`` dividing both logits.
    weights: optional ``[batch, h, w]`` cell weights replacing the teacher's confidence.

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.array([[[[2.0, -3.0]]]])
    >>> losses.heatmap_kd(z, z)
    Array([0.], dtype=float32)

  References:
    G. Chen, W. Choi, X. Yu, T. Han, M. Chandraker, "Learning Efficient Object Detection Models
    with Knowledge Distillation", NeurIPS 2017 (soft-label classification distillation for
    detectors); G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
    2015 (``T^2``).

  Convention: forward KL(teacher || student) per class (binary, as the heatmap is per-class
  sigmoid), summed over classes, scaled by ``T^2``, weighted mean over cells; the weights are a
  constant of the teacher (no gradient).
  """
  s, t = _utils.as_float(student_logits, teacher_logits, what="logits")
  _check_dense_pair(s, t, "heatmap_kd", same_channels=True)
  _utils.check_temperature(temperature)
  temp = jnp.asarray(temperature, s.dtype)
  ls_pos, ls_neg = jax.nn.log_sigmoid(s / temp), jax.nn.log_sigmoid(-s / temp)
  lt_pos, lt_neg = jax.nn.log_sigmoid(t / temp), jax.nn.log_sigmoid(-t / temp)
  kl = (_utils.kl_terms(lt_pos, ls_pos) + _utils.kl_terms(lt_neg, ls_neg)).sum(axis=-1)
  w = (jax.lax.stop_gradient(jnp.max(jax.nn.sigmoid(t), axis=-1)) if weights is None else
       _check_weights(weights, s.shape[:3], "heatmap_kd", s.dtype))
  return _weighted_mean(temp**2 * kl, w)


def localization_distillation(student_box_logits: jax.typing.ArrayLike,
                              teacher_box_logits: jax.typing.ArrayLike,
                              weights: jax.typing.ArrayLike,
                              *,
                              temperature: jax.typing.ArrayLike = 10.0) -> jax.Array:
  r"""Localization distillation: the KL between discretised box-edge distributions.

  .. math::
    \ell_b = \frac{\sum_x w_x \sum_{e=1}^{4} T^2\,
      \mathrm{KL}\big(\mathrm{softmax}(z^t_{x,e} / T) \,\|\, \mathrm{softmax}(z^s_{x,e} / T)\big)}
      {\sum_x w_x}

  over the four edges ``e`` of the box each cell predicts: the student learns where the teacher
  is sure of an edge and where it hesitates, not just its expected position.

  Args:
    student_box_logits: ``[batch, h, w, 4, n_bins]`` edge-distance logits of the student.
    teacher_box_logits: the teacher's, same shape.
    weights: ``[batch, h, w]`` non-negative cell weights, e.g. the teacher's confidence
      (:func:`teacher_confidence`), or the positive cells of :func:`point_targets`.
    temperature: ``T > 0`` (10 in the paper).

  Returns:
    Per-example loss, shape ``[batch]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> z = jnp.zeros((1, 2, 2, 4, 8))
    >>> losses.localization_distillation(z, z, jnp.ones((1, 2, 2)))
    Array([0.], dtype=float32)

  References:
    Z. Zheng, R. Ye, P. Wang, D. Ren, W. Zuo, Q. Hou, M.-M. Cheng, "Localization Distillation
    for Dense Object Detection", CVPR 2022.

  Convention: forward KL(teacher || student) per edge, summed over the 4 edges, scaled by
  ``T^2``, weighted mean over cells (the paper restricts LD to its main and valuable
  localization regions; here the weights choose the region).
  """
  s, t = _utils.as_float(student_box_logits, teacher_box_logits, what="box logits")
  if s.shape != t.shape or s.ndim != 5 or s.shape[3] != 4:
    raise ValueError(f"localization_distillation needs student and teacher box logits of one "
                     f"shape [batch, h, w, 4, n_bins]; got {s.shape} and {t.shape} (give both "
                     "detectors the same n_bins and stride)")
  _utils.check_temperature(temperature)
  w = _check_weights(weights, s.shape[:3], "localization_distillation", s.dtype)
  temp = jnp.asarray(temperature, s.dtype)
  kl = _utils.kl_from_log_probs(_utils.log_softmax(t, temp), _utils.log_softmax(s, temp))
  return _weighted_mean(temp**2 * kl.sum(axis=-1), w)


def imitation_mask(boxes: jax.typing.ArrayLike,
                   valid: jax.typing.ArrayLike,
                   *,
                   grid: Sequence[int],
                   stride: float,
                   anchor_sizes: Sequence[float],
                   psi: float = 0.5) -> jax.Array:
  r"""Fine-grained imitation region: the cells whose anchors overlap an object well.

  Every cell carries square anchors of the given sizes centred on it. For each ground-truth box
  ``g``, with ``m_g`` the largest IoU any anchor of any cell reaches with it, a cell is imitated
  when one of its anchors has ``IoU > psi * m_g``; the mask is the union over boxes.

  Args:
    boxes: ``[batch, max_boxes, 4]`` boxes ``(x0, y0, x1, y1)`` in pixels.
    valid: ``[batch, max_boxes]`` bool, False for padding.
    grid: the feature map's grid ``(h, w)``.
    stride: pixels per cell.
    anchor_sizes: side lengths (pixels) of the anchors at every cell (an anchor-free detector
      has none of its own: pick sizes spanning its objects).
    psi: the threshold factor in ``(0, 1)`` (0.5 in the paper).

  Returns:
    ``[batch, h, w]`` float32 mask of 0 and 1.

  References:
    T. Wang, L. Yuan, X. Zhang, J. Feng, "Distilling Object Detectors with Fine-grained Feature
    Imitation", CVPR 2019.
  """
  if not 0.0 < psi < 1.0:
    raise ValueError(f"psi must be in (0, 1), got {psi}; the paper uses 0.5")
  sizes = tuple(float(a) for a in anchor_sizes)
  if not sizes or min(sizes) <= 0:
    raise ValueError(f"anchor_sizes must be positive pixel sizes, got {anchor_sizes}")
  boxes, valid = _check_boxes(boxes, valid, "imitation_mask")
  dtype = boxes.dtype
  c = cell_centers(grid, stride, dtype)  # [h, w, 2]
  half = (jnp.asarray(sizes, dtype) / 2)[None, None, None, None, :]  # [1, 1, 1, 1, A]
  cx = c[None, None, :, :, None, 0]  # [1, 1, h, w, 1]
  cy = c[None, None, :, :, None, 1]
  ax0, ay0, ax1, ay1 = cx - half, cy - half, cx + half, cy + half  # [1, 1, h, w, A]
  b = boxes[:, :, None, None, None, :]  # [B, N, 1, 1, 1, 4]
  iw = jnp.clip(jnp.minimum(ax1, b[..., 2]) - jnp.maximum(ax0, b[..., 0]), 0.0, None)
  ih = jnp.clip(jnp.minimum(ay1, b[..., 3]) - jnp.maximum(ay0, b[..., 1]), 0.0, None)
  inter = iw * ih  # [B, N, h, w, A]
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  iou = inter / (jnp.square(2 * half) + area_b - inter)
  iou = jnp.where(valid[:, :, None, None, None], iou, jnp.zeros((), dtype))
  best = jnp.max(iou, axis=(2, 3, 4), keepdims=True)
  hit = (iou > psi * best) & (best > 0)
  return jnp.any(hit, axis=(1, 4)).astype(jnp.float32)


def feature_imitation(student_feat: jax.typing.ArrayLike,
                      teacher_feat: jax.typing.ArrayLike,
                      mask: jax.typing.ArrayLike) -> jax.Array:
  r"""Feature imitation restricted to object regions (fine-grained feature imitation).

  .. math::
    \ell_b = \frac{1}{2 \max(N_b, 1)} \sum_{x} I_x \sum_{c} (f_s[x, c] - f_t[x, c])^2,
    \qquad N_b = \sum_x I_x

  Args:
    student_feat: student features after the adapter, ``[batch, h, w, C]``.
    teacher_feat: teacher features, same shape.
    mask: ``[batch, h, w]`` imitation mask of 0 and 1 (:func:`imitation_mask`).

  Returns:
    Per-example loss, shape ``[batch]``, float32; 0 for an example with an empty mask.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> m = jnp.array([[[1.0, 0.0]]])
    >>> losses.feature_imitation(jnp.ones((1, 1, 2, 3)), jnp.zeros((1, 1, 2, 3)), m)
    Array([1.5], dtype=float32)

  References:
    T. Wang, L. Yuan, X. Zhang, J. Feng, "Distilling Object Detectors with Fine-grained Feature
    Imitation", CVPR 2019 (eq. 2).

  Convention: the paper's ``1 / (2 N_p)`` normalisation, per example; the adapter (a 3x3 or 1x1
  convolution from the student's channels to the teacher's) is a trainable part of the term.
  """
  s, t, m = _utils.as_float(student_feat, teacher_feat, mask, what="features and mask")
  _check_dense_pair(s, t, "feature_imitation", same_channels=True)
  if m.shape != s.shape[:3]:
    raise ValueError(f"feature_imitation: the mask must have shape {s.shape[:3]} ([batch, h, "
                     f"w] of the features), got {m.shape}; build it on the tapped map's grid")
  sq = jnp.sum(jnp.square(s - t), axis=-1)
  n = jnp.sum(m, axis=(1, 2))
  return jnp.sum(m * sq, axis=(1, 2)) / (2.0 * jnp.maximum(n, jnp.ones((), s.dtype)))


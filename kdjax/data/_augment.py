"""Image preprocessing: to float, random crop + flip, mixup / cutmix, standardisation.

Every random choice for an example is drawn from ``(seed, position)``, where ``position`` is the
example's place in the global stream of training examples (``step * global_batch_size + row``).
So the augmented batch does not depend on how many processes or workers load it, each epoch sees
a new view of every example, and the view is made once, in the input pipeline, so teacher and
student see the same pixels ("consistent" teaching, Beyer et al. 2022).

With augmentation replay (``replay_epochs=E``) the draws of example ``i`` in epoch ``e`` come
from ``(seed, e mod E, i)`` instead: the stream cycles through ``E`` fixed views of every example,
so a teacher's outputs on them can be computed once and cached (:mod:`kdjax.teacher_cache`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from kdjax.data._base import DataError

# Stream tags keep the draws of different purposes independent for the same (seed, position).
_VIEW_STREAM = 1
_PAIR_STREAM = 2
_REPLAY_STREAM = 3


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Training augmentation; the defaults do nothing.

  Attributes:
    crop_padding: pad each side with this many zero pixels, then crop back to the original size
      at a random offset (the CIFAR recipe uses 4). 0 disables the crop.
    flip: flip horizontally with probability 1/2.
    mixup_alpha: mixup (Zhang et al. 2018): blend each example with a partner from the same
      global batch, weight ``lambda ~ Beta(alpha, alpha)`` per example. 0 disables it.
    cutmix_alpha: CutMix (Yun et al. 2019): paste a box of the partner, ``lambda`` (the share of
      the example's own pixels) starts from ``Beta(alpha, alpha)`` and is set to the exact pixel
      share after the box is clipped to the image. 0 disables it; at most one of mixup / cutmix.
  """
  crop_padding: int = 0
  flip: bool = False
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0

  def __post_init__(self):
    if int(self.crop_padding) != self.crop_padding or self.crop_padding < 0:
      raise DataError(f"augment.crop_padding must be an int >= 0, got {self.crop_padding}")
    for key in ("mixup_alpha", "cutmix_alpha"):
      value = getattr(self, key)
      if not np.isfinite(value) or value < 0:
        raise DataError(f"augment.{key} must be >= 0 (0 disables it), got {value}")
    if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
      raise DataError("augment.mixup_alpha and augment.cutmix_alpha are both set; set one of "
                      "them to 0")

  @property
  def mixes(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def augment_options(augment: AugmentOptions | Mapping[str, Any] | Any | None) -> AugmentOptions:
  """``None``, a dict, an ``ml_collections.ConfigDict`` or :class:`AugmentOptions`."""
  if augment is None:
    return AugmentOptions()
  if isinstance(augment, AugmentOptions):
    return augment
  if hasattr(augment, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    augment = augment.to_dict()
  if not isinstance(augment, Mapping):
    raise DataError(f"augment must be a dict, a ConfigDict or None, got {type(augment).__name__}")
  fields = {f.name for f in dataclasses.fields(AugmentOptions)}
  unknown = sorted(set(augment) - fields)
  if unknown:
    raise DataError(f"unknown augment option(s) {unknown}; the options are {sorted(fields)}")
  return AugmentOptions(**augment)


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float images are taken to be in ``[0, 1]``."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image.astype(np.float32) / np.float32(255.0)
  if np.issubdtype(image.dtype, np.floating):
    return image.astype(np.float32)
  raise DataError(f"images must be uint8 or float, got {image.dtype}")


@dataclasses.dataclass(frozen=True)
class _Views:
  """The random draws that make one view per example: crop offsets, flip, mixing weight."""
  offsets: np.ndarray  # int [b, 2]
  flips: np.ndarray  # bool [b]
  lambdas: np.ndarray  # float32 [b], 1 when not mixing
  box_centers: np.ndarray  # float [b, 2] in [0, 1), for CutMix


def draw_views(seed: int, positions: Sequence[int], options: AugmentOptions, *,
               replay: Sequence[int] | None = None) -> _Views:
  """The draws for the examples at ``positions`` of the stream; a function of (seed, position).

  With ``replay`` (one replay epoch per example), ``positions`` are the examples' indices in the
  split and the draws are a function of ``(seed, replay, index)``: the same replay epoch of the
  same example always gets the same view.
  """
  if replay is not None and len(replay) != len(positions):
    raise DataError(f"replay has {len(replay)} entries but there are {len(positions)} examples")
  pad = int(options.crop_padding)
  alpha = options.mixup_alpha or options.cutmix_alpha
  if not (pad or options.flip or alpha):  # Nothing random: skip the per-example generators.
    b = len(positions)
    return _Views(np.zeros((b, 2), np.int64), np.zeros((b,), bool), np.ones((b,), np.float32),
                  np.zeros((b, 2)))
  offsets, flips, lambdas, centers = [], [], [], []
  for j, position in enumerate(positions):
    # Fixed-size uniform draws first, in a fixed order, and the Beta draw (which consumes a
    # variable amount) last: turning one option on or off does not change the others' draws.
    if replay is None:
      rng = np.random.default_rng((seed, _VIEW_STREAM, int(position)))
    else:
      rng = np.random.default_rng((seed, _REPLAY_STREAM, int(replay[j]), int(position)))
    offsets.append(np.floor(rng.random(2) * (2 * pad + 1)).astype(np.int64))
    flips.append(rng.random() < 0.5)
    centers.append(rng.random(2))
    lambdas.append(rng.beta(alpha, alpha) if alpha > 0 else 1.0)
  return _Views(np.asarray(offsets, np.int64).reshape(-1, 2), np.asarray(flips, bool),
                np.asarray(lambdas, np.float32), np.asarray(centers).reshape(-1, 2))


def crop_and_flip(images: np.ndarray, views: _Views, options: AugmentOptions) -> np.ndarray:
  """Random zero-padded crop and horizontal flip of float images ``[b, H, W, C]``."""
  pad = int(options.crop_padding)
  if not (pad or options.flip):
    return images
  b, h, w, c = images.shape
  padded = images
  if pad:
    padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
    padded[:, pad:pad + h, pad:pad + w] = images
  out = np.empty_like(images)
  for i in range(b):
    y, x = views.offsets[i] if pad else (0, 0)
    view = padded[i, y:y + h, x:x + w]
    out[i] = view[:, ::-1] if options.flip and views.flips[i] else view
  return out


def mixing_partners(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """Row ``i`` of global batch ``step`` is mixed with row ``partners[i]`` of the same batch."""
  rng = np.random.default_rng((seed, _PAIR_STREAM, int(step)))
  return rng.permutation(global_batch_size)


def mix(images: np.ndarray, partner_images: np.ndarray, views: _Views,
        options: AugmentOptions) -> tuple[np.ndarray, np.ndarray]:
  """Mixup or CutMix of ``images`` with ``partner_images``; returns ``(images, lambdas)``.

  ``lambdas[i]`` is the weight of example ``i``'s own label; the partner's label gets
  ``1 - lambdas[i]``.
  """
  lam = views.lambdas
  if options.mixup_alpha > 0:
    weight = lam[:, None, None, None]
    return weight * images + (np.float32(1.0) - weight) * partner_images, lam
  h, w = images.shape[1:3]
  out = images.copy()
  cut = np.sqrt(np.float32(1.0) - lam)
  half_h, half_w = (h * cut).astype(int) // 2, (w * cut).astype(int) // 2
  centers = (views.box_centers * np.array([h, w])).astype(int)
  lambdas = np.empty_like(lam)
  for i, (cy, cx) in enumerate(centers):
    y0, y1 = np.clip([cy - half_h[i], cy + half_h[i]], 0, h)
    x0, x1 = np.clip([cx - half_w[i], cx + half_w[i]], 0, w)
    out[i, y0:y1, x0:x1] = partner_images[i, y0:y1, x0:x1]
    lambdas[i] = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  return out, lambdas


def standardize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)

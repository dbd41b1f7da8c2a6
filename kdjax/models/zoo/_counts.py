"""Parameter counts of the zoo, next to the figures the distillation literature prints.

Run ``python -m kdjax.models.zoo._counts`` to print the table of ``docs/models.md``. Counts are
trainable parameters only (BatchNorm running statistics excluded), obtained with
``jax.eval_shape`` (no compute), for 100 classes and 32x32x3 inputs (``transformer_lm``: a
vocabulary of 100, ``max_len=128``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kdjax.models.zoo import _registry

# Millions of parameters at 100 classes, as the CIFAR-100 distillation literature quotes them (two
# decimals) for the benchmark models of Tian et al., "Contrastive Representation Distillation"
# (ICLR 2020), defined in its RepDistiller code base.
PUBLISHED = {
    "resnet8": 0.08, "resnet14": 0.17, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.66,
    "resnet56": 0.86, "resnet110": 1.73, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg8": 3.96, "vgg13": 9.46, "resnet50": 23.71, "mobilenetv2": 0.81,
    "shufflenetv1": 0.95, "shufflenetv2": 1.36,
}

# Names the reference code bases use for the same architectures.
REFERENCE_NAMES = {"resnet50": "ResNet50", "mobilenetv2": "mobile_half",
                   "shufflenetv1": "ShuffleV1", "shufflenetv2": "ShuffleV2"}

_CIFAR_RESNET = ("stem", "stage1", "stage2", "stage3", "pre_logits")

# The main taps of each model (every submodule path is tappable; these are the usual ones).
MAIN_TAPS = {
    "mlp": ("stage1", "pre_logits"),
    "cnn_small": ("stem", "stage1", "stage2", "pre_logits"),
    **{f"resnet{d}": _CIFAR_RESNET for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _CIFAR_RESNET, "resnet32x4": _CIFAR_RESNET,
    "resnet50": ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits"),
    **{f"wrn_{d}_{k}": _CIFAR_RESNET for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{f"vgg{d}": ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits")
       for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": ("stem", *(f"stage{k}" for k in range(1, 8)), "head_conv", "pre_logits"),
    "shufflenetv1": ("stem", "stage1", "stage2", "stage3", "pre_logits"),
    "shufflenetv2": ("stem", "stage1", "stage2", "stage3", "head_conv", "pre_logits"),
    "vit_tiny": ("stem", "blocks_0", "blocks_5", "blocks_5/attn", "blocks_5/attn_probs",
                 "pre_logits"),
    "transformer_lm": ("stem", "blocks_0", "blocks_1", "blocks_1/attn", "blocks_1/attn_probs",
                       "pre_logits"),
}

_TAP_SUMMARY = {
    "vit_tiny": "stem, blocks_{0..5}, blocks_{i}/attn, blocks_{i}/attn_probs, pre_logits",
    "transformer_lm": "stem, blocks_{0..1}, blocks_{i}/attn, blocks_{i}/attn_probs, pre_logits",
}


def example_input(name: str, batch: int = 1) -> jax.ShapeDtypeStruct:
  """The input the table's counts are taken at."""
  if name == "transformer_lm":
    return jax.ShapeDtypeStruct((batch, 16), jnp.int32)
  return jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)


def count(name: str, num_classes: int = 100, **kwargs) -> int:
  """Trainable parameters of zoo model ``name``, by shape inference only."""
  module = _registry.MODELS[name](num_classes=num_classes, **kwargs)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), example_input(name))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def table() -> str:
  rows = ["| model | params (100 classes) | published | main taps |",
          "| --- | ---: | ---: | --- |"]
  for name in _registry.MODELS:
    n = count(name)
    published = f"{PUBLISHED[name]:.2f}M" if name in PUBLISHED else "-"
    label = f"`{name}`" + (f" ({REFERENCE_NAMES[name]})" if name in REFERENCE_NAMES else "")
    taps = _TAP_SUMMARY.get(name, ", ".join(MAIN_TAPS[name]))
    rows.append(f"| {label} | {n:,} ({n / 1e6:.2f}M) | {published} | {taps} |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(table())

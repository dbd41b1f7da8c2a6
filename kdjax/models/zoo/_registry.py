"""Zoo names -> module constructors (keyword arguments pass through to the module)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.zoo._decoder import decoder
from kdjax.models.zoo._mobilenet import MobileNetV2
from kdjax.models.zoo._resnet import cifar_resnet, resnet50
from kdjax.models.zoo._shufflenet import ShuffleNetV1, ShuffleNetV2
from kdjax.models.zoo._simple import CNNSmall, MLP
from kdjax.models.zoo._transformer import TransformerLM, ViT
from kdjax.models.zoo._vgg import VGG
from kdjax.models.zoo._wrn import WideResNet

_X4 = (32, 64, 128, 256)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn_small": CNNSmall,
    **{f"resnet{d}": functools.partial(cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(cifar_resnet, 8, _X4),
    "resnet32x4": functools.partial(cifar_resnet, 32, _X4),
    "resnet50": resnet50,
    **{f"wrn_{d}_{k}": functools.partial(WideResNet, depth=d, widen_factor=k)
       for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{f"vgg{d}": functools.partial(VGG, depth=d) for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": MobileNetV2,
    "shufflenetv1": ShuffleNetV1,
    "shufflenetv2": ShuffleNetV2,
    "vit_tiny": ViT,
    "transformer_lm": TransformerLM,
}

# Zoo names built by a function returning a kdjax.models.Model (create passes it num_classes,
# rng, taps, dtype and the model kwargs) rather than by a Linen module constructor.
FACTORIES: dict[str, Callable[..., Any]] = {"decoder": decoder}

# Zoo names whose model takes ``remat=True``: each block rematerialised in the backward pass.
REMAT_MODELS = ("vit_tiny", "transformer_lm", "decoder")

# The dtype of the example batch ``create`` initialises with; images (float32) otherwise.
INPUT_DTYPES: dict[str, Any] = {"transformer_lm": jnp.int32, "decoder": jnp.int32}

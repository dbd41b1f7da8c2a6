"""The model zoo: Flax Linen modules with named stages, for distillation experiments.

Every module takes ``num_classes`` and ``dtype`` (the compute dtype; parameters stay float32),
is called as ``module.apply(variables, x, train=...)``, returns float32 logits, names its parts
``stem``, ``stage1..stageK`` (CNNs) or ``blocks_{i}`` (Transformers) so they can be tapped, and
sows its pooled penultimate features as ``'pre_logits'``. Build them by name with
:func:`kdjax.models.get_model` / :func:`kdjax.models.create`; see ``docs/models.md`` for the table.
:func:`stage_layout` says where a CNN's stage outputs and the layers around them are (the taps
that feature terms such as AB, OFD and FSP read).
"""
from kdjax.models.zoo._dense import DENSE_MODELS
from kdjax.models.zoo._dense import PointDetector
from kdjax.models.zoo._dense import SegmentationUNet
from kdjax.models.zoo._dense import decode_detections
from kdjax.models.zoo._layout import StageLayout
from kdjax.models.zoo._layout import stage_layout
from kdjax.models.zoo._decoder import Decoder
from kdjax.models.zoo._decoder import DecoderConfig
from kdjax.models.zoo._decoder import KVCache
from kdjax.models.zoo._decoder import init_cache
from kdjax.models.zoo._mobilenet import MobileNetV2
from kdjax.models.zoo._registry import REMAT_MODELS
from kdjax.models.zoo._resnet import ResNet
from kdjax.models.zoo._shufflenet import ShuffleNetV1
from kdjax.models.zoo._shufflenet import ShuffleNetV2
from kdjax.models.zoo._simple import CNNSmall
from kdjax.models.zoo._simple import MLP
from kdjax.models.zoo._transformer import TransformerLM
from kdjax.models.zoo._transformer import ViT
from kdjax.models.zoo._vgg import VGG
from kdjax.models.zoo._wrn import WideResNet

__all__ = [
    "CNNSmall", "DENSE_MODELS", "Decoder", "DecoderConfig", "KVCache", "init_cache", "MLP",
    "MobileNetV2", "PointDetector", "REMAT_MODELS", "ResNet", "SegmentationUNet", "ShuffleNetV1", "ShuffleNetV2", "StageLayout", "TransformerLM", "VGG",
    "ViT", "WideResNet", "decode_detections", "stage_layout",
]

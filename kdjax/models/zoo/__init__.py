"""The model zoo: Flax Linen modules with named stages, for distillation experiments.

Every module takes ``num_classes`` and ``dtype`` (the compute dtype; parameters stay float32),
is called as ``module.apply(variables, x, train=...)``, returns float32 logits, names its parts
``stem``, ``stage1..stageK`` (CNNs) or ``blocks_{i}`` (Transformers) so they can be tapped, and
sows its pooled penultimate features as ``'pre_logits'``. Build them by name with
:func:`kdjax.models.get_model` / :func:`kdjax.models.create`; see ``docs/models.md`` for the table.
"""
from kdjax.models.zoo._mobilenet import MobileNetV2
from kdjax.models.zoo._resnet import ResNet
from kdjax.models.zoo._shufflenet import ShuffleNetV1
from kdjax.models.zoo._shufflenet import ShuffleNetV2
from kdjax.models.zoo._simple import CNNSmall
from kdjax.models.zoo._simple import MLP
from kdjax.models.zoo._transformer import TransformerLM
from kdjax.models.zoo._transformer import ViT
from kdjax.models.zoo._vgg import VGG
from kdjax.models.zoo._wrn import WideResNet

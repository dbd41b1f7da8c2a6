"""Models in kdjax's one protocol: adapters for Linen, NNX and plain functions, and a model zoo.

``apply(params, model_state, inputs, *, train, rng) -> (Outputs(logits, features), new_state)``;
see :mod:`kdjax.models._base`. Features are tapped by module path without editing the model.
"""
from kdjax.models._apply_fn import from_apply_fn
from kdjax.models._base import ApplyFn
from kdjax.models._base import Model
from kdjax.models._base import Outputs
from kdjax.models._create import available_models
from kdjax.models._create import check_model
from kdjax.models._create import create
from kdjax.models._create import get_model
from kdjax.models._create import param_count
from kdjax.models._create import register
from kdjax.models._create import registered_models
from kdjax.models._create import resolve_model
from kdjax.models._hf import HF_ARCHITECTURES
from kdjax.models._hf import decoder_model
from kdjax.models._hf import decoder_module
from kdjax.models._hf import from_hf
from kdjax.models._hf import load_tokenizer
from kdjax.models._hf import save_hf
from kdjax.models._io import load_variables
from kdjax.models._linen import from_linen
from kdjax.models._nnx import from_nnx
from kdjax.models._pytorch import from_pytorch
from kdjax.models import zoo

__all__ = (
    "ApplyFn",
    "HF_ARCHITECTURES",
    "Model",
    "Outputs",
    "available_models",
    "check_model",
    "create",
    "decoder_model",
    "decoder_module",
    "from_apply_fn",
    "from_hf",
    "from_linen",
    "from_nnx",
    "from_pytorch",
    "get_model",
    "load_tokenizer",
    "load_variables",
    "param_count",
    "register",
    "registered_models",
    "resolve_model",
    "save_hf",
    "zoo",
)

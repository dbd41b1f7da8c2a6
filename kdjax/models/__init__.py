"""Models in kdjax's one protocol: adapters for Linen, NNX and plain functions, and a model zoo.

``apply(params, model_state, inputs, *, train, rng) -> (Outputs(logits, features), new_state)``;
see :mod:`kdjax.models._base`. Features are tapped by module path without editing the model.
"""
from kdjax.models._apply_fn import from_apply_fn
from kdjax.models._base import ApplyFn
from kdjax.models._base import Model
from kdjax.models._base import Outputs
from kdjax.models._create import available_models
from kdjax.models._create import create
from kdjax.models._create import get_model
from kdjax.models._create import param_count
from kdjax.models._io import load_variables
from kdjax.models._linen import from_linen
from kdjax.models._nnx import from_nnx
from kdjax.models import zoo

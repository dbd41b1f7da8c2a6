"""kdjax: knowledge distillation for JAX.

The functional core: ``kdjax.distill_step(state, batch) -> (state, metrics)`` with a
``kdjax.DistillState`` built from any Flax Linen / NNX module or plain apply function, objectives
composed from ``kdjax.objectives`` and losses from ``kdjax.losses``.
"""
from kdjax import losses
from kdjax import models
from kdjax import objectives
from kdjax._checked import checked
from kdjax.step import DistillState
from kdjax.step import distill_step
from kdjax.step import eval_step

__version__ = "0.1.0"

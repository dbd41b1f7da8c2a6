"""The distillation step, scaled: jit over a device mesh (data parallel, FSDP) or pmap."""
from kdjax.parallel._mesh import DATA_AXIS
from kdjax.parallel._mesh import FSDP_AXIS
from kdjax.parallel._mesh import MODEL_AXIS
from kdjax.parallel._mesh import MODEL_RULES
from kdjax.parallel._mesh import batch_sharding
from kdjax.parallel._mesh import bytes_per_device
from kdjax.parallel._mesh import fsdp_spec
from kdjax.parallel._mesh import make_mesh
from kdjax.parallel._mesh import param_shardings
from kdjax.parallel._mesh import replicated
from kdjax.parallel._runner import PMAP_AXIS
from kdjax.parallel._runner import MeshRunner
from kdjax.parallel._runner import PmapRunner
from kdjax.parallel._runner import make_runner

__all__ = (
    "DATA_AXIS",
    "FSDP_AXIS",
    "MODEL_AXIS",
    "MODEL_RULES",
    "MeshRunner",
    "PMAP_AXIS",
    "PmapRunner",
    "batch_sharding",
    "bytes_per_device",
    "fsdp_spec",
    "make_mesh",
    "make_runner",
    "param_shardings",
    "replicated",
)

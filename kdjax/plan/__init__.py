"""Plans before runs: every run of a config compiled ahead of time for a TPU slice or GPUs.

``python -m kdjax.plan --config=configs/cifar100/kd.py --topology=v5e:2x2`` (or
``kdjax.plan.plan(config, 'v5e:2x2')``) resolves the config as ``kdjax.main`` does, builds each
run's state shape-only, places it with the run's own sharding rules and compiles its train and
evaluation steps for the topology's devices -- on any machine, with compile-only devices from
``libtpu`` or the CUDA plugin (``pip install 'kdjax[plan]'``). It reports memory per device,
whether it fits, FLOPs, the estimated step time, throughput and MFU, and the smallest config
change that fits when a run does not. See ``docs/tpu.md``.
"""
from kdjax.plan._analysis import ProgramCost
from kdjax.plan._analysis import analyze
from kdjax.plan._analysis import count_collectives
from kdjax.plan._chips import CHIPS
from kdjax.plan._chips import Chip
from kdjax.plan._chips import GpuDevice
from kdjax.plan._main import main
from kdjax.plan._plan import PlanReport
from kdjax.plan._plan import RunReport
from kdjax.plan._plan import candidates
from kdjax.plan._plan import plan
from kdjax.plan._topology import Topology
from kdjax.plan._topology import TopologyError
from kdjax.plan._topology import get_topology

__all__ = [
    "CHIPS", "Chip", "GpuDevice", "PlanReport", "ProgramCost", "RunReport", "Topology",
    "TopologyError", "analyze", "candidates", "count_collectives", "get_topology", "main", "plan",
]

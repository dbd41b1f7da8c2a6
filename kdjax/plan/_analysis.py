"""What a compiled program says about itself: memory per device, FLOPs, time, collectives.

Memory is the compiler's buffer assignment for one device: arguments + temporaries + outputs -
outputs aliased to (donated) arguments. FLOPs and bytes accessed are the compiler's cost
analysis of the per-device (partitioned) program, multiplied by the device count for the whole
step. The GPU compiler reports no cost: there XLA's HLO cost model counts the FLOPs of the
lowered program and the bytes of the optimised per-device module. The TPU compiler estimates
the step's time itself (``optimal_seconds``, though not for every program); where there is no
estimate (GPUs always) the time is a roofline, ``max(flops / peak FLOP/s, bytes / memory
bandwidth)`` per device, labelled ``roofline``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from kdjax.plan._chips import Chip

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter")
# An instruction's opcode follows its result shape: `%x = f32[8]{0} all-reduce(...)`; async
# collectives appear as a `-start` / `-done` pair and count once.
_OPCODE = re.compile(r"\s(all-reduce|all-gather|reduce-scatter)(?:-start)?\(")


@dataclasses.dataclass(frozen=True)
class ProgramCost:
  """One compiled program on one topology.

  Attributes:
    peak_bytes: per device: arguments + temporaries + outputs - aliases.
    argument_bytes, temp_bytes, output_bytes, alias_bytes: the parts, per device.
    flops: the whole program over all devices.
    bytes_accessed: memory traffic, whole program over all devices.
    seconds: estimated time of one execution (``None`` when nothing estimates it).
    time_source: ``'compiler'`` (TPU ``optimal_seconds``) or ``'roofline'`` (from the FLOPs,
      bytes and the chip's peak figures).
    collectives: ``{'all-reduce': n, 'all-gather': n, 'reduce-scatter': n}`` in the program.
  """

  peak_bytes: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  flops: float
  bytes_accessed: float
  seconds: float | None
  time_source: str
  collectives: dict[str, int]


def count_collectives(hlo_text: str) -> dict[str, int]:
  """How many all-reduce / all-gather / reduce-scatter instructions an HLO module holds."""
  counts = {name: 0 for name in COLLECTIVES}
  for match in _OPCODE.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def _cost(analysis: Any) -> dict[str, float]:
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device program.
    analysis = analysis[0] if analysis else None
  return dict(analysis or {})


def _hlo_cost(module: Any) -> dict[str, float]:
  """XLA's HLO cost model on ``module``, run on the CPU client (any backend's HLO)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  return _cost(xla_client._xla.hlo_module_cost_analysis(  # pylint: disable=protected-access
      jax.devices("cpu")[0].client, module))


def _gpu_cost(lowered: Any, compiled: Any, num_devices: int) -> tuple[float, float]:
  """Whole-step FLOPs and bytes accessed where the compiler reports no cost (GPUs).

  FLOPs: the HLO cost model on the lowered program (global, before partitioning), where
  convolutions and matmuls are still HLO ops (the optimised module calls cuDNN and cuBLAS, which
  the model counts as no FLOPs). Bytes: the model on the optimised per-device module, whose
  fusions keep intermediates out of memory, times the devices.
  """
  flops = float(_hlo_cost(lowered.compiler_ir("hlo").as_hlo_module()).get("flops", 0.0))
  modules = compiled.runtime_executable().hlo_modules()
  optimised = _hlo_cost(modules[0]) if modules else {}
  flops = max(flops, float(optimised.get("flops", 0.0)) * num_devices)
  return flops, float(optimised.get("bytes accessed", 0.0)) * num_devices


def analyze(lowered: Any, compiled: Any, chip: Chip, num_devices: int) -> ProgramCost:
  """The :class:`ProgramCost` of ``compiled`` (``lowered.compile()``) on ``num_devices``
  ``chip``s."""
  memory = compiled.memory_analysis()
  args = int(memory.argument_size_in_bytes)
  temp = int(memory.temp_size_in_bytes)
  outs = int(memory.output_size_in_bytes)
  alias = int(memory.alias_size_in_bytes)
  cost = _cost(compiled.cost_analysis())
  if cost.get("flops"):
    flops = float(cost["flops"]) * num_devices
    accessed = float(cost.get("bytes accessed", 0.0)) * num_devices
  else:
    flops, accessed = _gpu_cost(lowered, compiled, num_devices)
  seconds, source = None, "compiler"
  if cost.get("optimal_seconds", 0.0) > 0:
    seconds = float(cost["optimal_seconds"])
  elif flops:
    seconds = max(flops / num_devices / chip.peak_flops,
                  accessed / num_devices / chip.bandwidth)
    source = "roofline"
  return ProgramCost(peak_bytes=args + temp + outs - alias, argument_bytes=args, temp_bytes=temp,
                     output_bytes=outs, alias_bytes=alias, flops=flops, bytes_accessed=accessed,
                     seconds=seconds, time_source=source,
                     collectives=count_collectives(compiled.as_text()))

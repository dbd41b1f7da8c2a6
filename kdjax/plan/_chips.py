"""Accelerator facts the plan needs, in one table, each row with its source.

``hbm_bytes``: memory per chip (per GPU). ``peak_flops``: dense bf16 matrix FLOP/s per chip,
without sparsity. ``bandwidth``: HBM (or GDDR) bytes per second per chip. The TPU rows come from
the Cloud TPU system-architecture pages; the GPU rows from NVIDIA's datasheets, with the device
description (SMs, clocks, memory, compute capability) the CUDA compiler targets.
"""
from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator model.

  Attributes:
    name: the name topologies use (``'v5e'``, ``'h100'``).
    platform: ``'tpu'`` or ``'cuda'``.
    device_kind: what ``jax.Device.device_kind`` reports for it.
    hbm_bytes: memory per chip.
    peak_flops: dense bf16 FLOP/s per chip.
    bandwidth: memory bytes/s per chip.
    source: where the figures come from.
    gpu: GPUs only: the device description (:class:`GpuDevice`) the CUDA compiler targets.
  """

  name: str
  platform: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float
  bandwidth: float
  source: str
  gpu: "GpuDevice | None" = None


@dataclasses.dataclass(frozen=True)
class GpuDevice:
  """The published facts of one NVIDIA GPU, as XLA's ``GpuTargetConfigProto`` holds them."""

  description: str  # cudaDeviceProp.name
  sms: int
  fp32_lanes_per_sm: int
  clock_ghz: float  # boost clock
  memory_bytes: int
  bandwidth: int  # bytes/s
  l2_bytes: int
  shared_per_sm: int
  shared_per_block_optin: int
  threads_per_sm: int
  compute_capability: tuple[int, int]

  def target_config(self) -> str:
    """The ``GpuTargetConfigProto`` text ``get_topology_desc(..., target_config=)`` reads."""
    major, minor = self.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_per_sm}
  threads_per_core_limit: {self.threads_per_sm}
  core_count: {self.sms}
  fpus_per_core: {self.fp32_lanes_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.bandwidth}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{self.description}"
"""


_H100 = GpuDevice("NVIDIA H100 80GB HBM3", sms=132, fp32_lanes_per_sm=128, clock_ghz=1.98,
                  memory_bytes=84_942_979_072, bandwidth=3_352_320_000_000, l2_bytes=52_428_800,
                  shared_per_sm=233_472, shared_per_block_optin=232_448, threads_per_sm=2048,
                  compute_capability=(9, 0))
_A100 = GpuDevice("NVIDIA A100-SXM4-80GB", sms=108, fp32_lanes_per_sm=64, clock_ghz=1.41,
                  memory_bytes=85_100_068_864, bandwidth=2_039_040_000_000, l2_bytes=41_943_040,
                  shared_per_sm=167_936, shared_per_block_optin=166_912, threads_per_sm=2048,
                  compute_capability=(8, 0))
_L4 = GpuDevice("NVIDIA L4", sms=58, fp32_lanes_per_sm=128, clock_ghz=2.04,
                memory_bytes=24 * 10**9, bandwidth=300 * 10**9, l2_bytes=50_331_648,
                shared_per_sm=102_400, shared_per_block_optin=101_376, threads_per_sm=1536,
                compute_capability=(8, 9))

_TPU_DOCS = "https://cloud.google.com/tpu/docs/"
CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", "tpu", "TPU v4", 32 * GiB, 275e12, 1228e9, _TPU_DOCS + "v4"),
    Chip("v5e", "tpu", "TPU v5 lite", 16 * GiB, 197e12, 819e9, _TPU_DOCS + "v5e"),
    Chip("v5p", "tpu", "TPU v5", 95 * GiB, 459e12, 2765e9, _TPU_DOCS + "v5p"),
    Chip("v6e", "tpu", "TPU v6 lite", 32 * GiB, 918e12, 1640e9, _TPU_DOCS + "v6e"),
    Chip("h100", "cuda", _H100.description, _H100.memory_bytes, 989e12, _H100.bandwidth,
         "https://www.nvidia.com/en-us/data-center/h100/ (SXM, dense BF16); device facts: "
         "XLA's gpu target_config specs/h100_sxm.txtpb", _H100),
    Chip("a100", "cuda", _A100.description, _A100.memory_bytes, 312e12, _A100.bandwidth,
         "https://www.nvidia.com/en-us/data-center/a100/ (SXM 80GB, dense BF16); device facts: "
         "XLA's gpu target_config specs/a100_sxm_80.txtpb", _A100),
    Chip("l4", "cuda", _L4.description, _L4.memory_bytes, 121e12, _L4.bandwidth,
         "https://www.nvidia.com/en-us/data-center/l4/ (dense BF16: half the 242 TFLOPS "
         "sparsity figure); Ada AD104, 58 SMs, 2040 MHz boost, 48 MiB L2", _L4),
)}

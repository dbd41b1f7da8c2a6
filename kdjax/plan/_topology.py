"""Compile-only devices of a TPU slice or a GPU cluster, on a machine that has neither.

``v5e:2x2`` (libtpu's topology names: ``<chip>:<chips per dimension>``; ``v5e-4``-style slice
names are accepted too) and ``h100:2x8`` (``<gpu>:<hosts>x<gpus per host>``). The devices come
from the TPU plugin (``libtpu``) or the CUDA plugin (``jax-cuda12-plugin``), which compile for the
chip without one being present; JAX's own platform (``JAX_PLATFORMS=cpu`` included) is untouched.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from kdjax.plan._chips import CHIPS, Chip

INSTALL = "pip install 'kdjax[plan]'"
# Slice names (chips counted as in the Cloud TPU accelerator types) -> libtpu topologies.
SLICE_NAMES = {
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4",
    "v6e-16": "v6e:4x4", "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2",
}


class TopologyError(ValueError):
  """A topology name that cannot be used, or a plugin that is not installed."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """The devices of a slice, and the chip they are.

  Attributes:
    name: as given (``'v5e:2x2'``, ``'h100:1x8'``).
    chip: the chip's facts (:data:`kdjax.plan.CHIPS`).
    devices: compile-only ``jax.Device``s, in process-major order.
    processes: hosts (JAX processes) of the slice.
    devices_per_process: devices each host drives.
    devices_per_chip: JAX devices on one chip: 2 on TPU v4, whose compile-only topologies give
      each TensorCore its own device (no megacore); 1 elsewhere.
    device: the facts of one device: the chip's, with its HBM, FLOP/s and bandwidth divided
      among its devices.
  """

  name: str
  chip: Chip
  devices: tuple[Any, ...]
  devices_per_chip: int = 1

  @property
  def device(self) -> Chip:
    n = self.devices_per_chip
    if n == 1:
      return self.chip
    return dataclasses.replace(self.chip, hbm_bytes=self.chip.hbm_bytes // n,
                               peak_flops=self.chip.peak_flops / n,
                               bandwidth=self.chip.bandwidth / n)

  @property
  def processes(self) -> int:
    return len({d.process_index for d in self.devices})

  @property
  def devices_per_process(self) -> int:
    return len(self.devices) // self.processes


def _tpu_devices(name: str) -> list:
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise TopologyError(f"planning for TPU topology '{name}' needs libtpu; install the plan "
                        f"extra: {INSTALL}") from None
  # Compiling needs no chip, so no claim on the host's TPUs: without this libtpu takes a
  # machine-wide lock file and a second planning process (or a training run) would be refused.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(name, "tpu").devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu's errors are plain RuntimeErrors.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TopologyError(f"libtpu cannot build topology '{name}': {first}; use e.g. v5e:2x2, "
                        f"v5e:4x4, v4:2x2x2 or a slice name ({', '.join(SLICE_NAMES)})") from None


def _gpu_devices(chip: Chip, hosts: int, per_host: int) -> list:
  try:
    import jax_plugins.xla_cuda12  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError:
    raise TopologyError(f"planning for {chip.name.upper()} GPUs needs the CUDA plugin "
                        f"(jax-cuda12-plugin, jax-cuda12-pjrt); install the plan extra: "
                        f"{INSTALL}") from None
  # Autotuning would run kernels on a GPU; without one the compiler takes its default choices.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_autotune_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_autotune_level=0".strip()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(
        "", "cuda", target_config=chip.gpu.target_config(),
        topology=f"1 x {hosts} x {per_host}").devices)
  except (NotImplementedError, RuntimeError) as e:  # No CUDA topology factory registered.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "not implemented for cuda" in first:  # Installed, but its start-up check found no CUDA.
      raise TopologyError(f"the CUDA plugin did not register ({first}): with no GPU here, start "
                          "JAX on the CPU (JAX_PLATFORMS=cpu, as kdjax plan does) so that the "
                          "plugin skips its CUDA check") from None
    raise TopologyError(f"the CUDA plugin cannot build {chip.name}:{hosts}x{per_host} ({first}); "
                        f"install the plan extra (jax-cuda12-plugin and jax-cuda12-pjrt at "
                        f"jax's version): {INSTALL}") from None


def get_topology(name: str) -> Topology:
  """The compile-only devices of topology ``name``.

  Args:
    name: a TPU topology (``'v5e:2x2'``, ``'v4:2x2x2'``, ``'v5p:2x2x2'``, ``'v6e:2x2'``) or slice
      name (``'v5e-16'``), or ``'<gpu>:<hosts>x<gpus per host>'`` with ``<gpu>`` one of
      ``h100``, ``a100``, ``l4`` (``'h100:1x8'``, ``'h100:2x8'``).

  Raises:
    TopologyError: an unknown chip or shape, or the plan extra is not installed (the message
      says how to install it).
  """
  given = name
  name = SLICE_NAMES.get(name.strip().lower(), name.strip().lower())
  chip_name, _, shape = name.partition(":")
  chip = CHIPS.get(chip_name)
  if chip is None or not re.fullmatch(r"\d+(x\d+)+", shape):
    raise TopologyError(f"--topology={given!r} is not a topology; use <chip>:<shape> with chip "
                        f"one of {sorted(CHIPS)} (e.g. v5e:2x2, v4:2x2x2, h100:1x8) or a slice "
                        f"name ({', '.join(SLICE_NAMES)})")
  dims = [int(d) for d in shape.split("x")]
  if chip.platform == "tpu":
    devices = _tpu_devices(name)
  else:
    if len(dims) != 2 or min(dims) < 1:
      raise TopologyError(f"--topology={given!r}: GPU topologies are <gpu>:<hosts>x<gpus per "
                          "host>, e.g. h100:1x8 or h100:2x8")
    devices = _gpu_devices(chip, dims[0], dims[1])
  devices.sort(key=lambda d: (d.process_index, d.id))
  if len(devices) != math.prod(dims) and chip.platform != "tpu":
    raise TopologyError(f"--topology={given!r}: expected {math.prod(dims)} devices, the plugin "
                        f"gave {len(devices)}")
  # TPU devices carry their chip's coordinates; several devices at one chip share its memory.
  chips = {(d.process_index, tuple(getattr(d, "coords", None) or (d.id,))) for d in devices}
  per_chip = len(devices) // len(chips) if chip.platform == "tpu" and chips else 1
  return Topology(name=given, chip=chip, devices=tuple(devices), devices_per_chip=max(1, per_chip))

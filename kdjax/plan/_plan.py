"""``plan(config, topology)``: every run compiled for a slice; fits, speed, and what would fit.

Each run's train step and evaluation step are lowered with the run's own shardings and compiled
for the topology's devices (:mod:`kdjax.plan._runs`, :mod:`kdjax.plan._analysis`). When a run
does not fit, :func:`plan` searches the config's own knobs, least intrusive first, for the
smallest change that fits: sharding parameters over an ``fsdp`` axis (the teacher's, then the
trained model's and its optimizer state too; the smallest axis that fits), then a ``model``
axis where the mesh has one (tensor parallelism of both models' layers), then bfloat16
computation, then gradient accumulation (smaller micro-batches, the same update), then a smaller
global batch. The change is printed as ``--config.<key>=<value>`` overrides.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

from kdjax.models import zoo
from kdjax.plan import _runs
from kdjax.plan._analysis import ProgramCost, analyze
from kdjax.plan._topology import Topology, get_topology
from kdjax.train import builders
from kdjax.train import config as config_lib
from kdjax.train.errors import ConfigError

MAX_TRIES = 8  # candidate configs compiled by the suggestion search, at most


@dataclasses.dataclass(frozen=True)
class RunReport:
  """One run on one topology.

  Attributes:
    name, kind: the run's declaration.
    params: parameters of the model it trains.
    batch_size: global examples per step.
    train: the train step's :class:`ProgramCost` (``None`` when the compiler found it does not
      fit and gave no analysis; ``error`` says what it said).
    eval: the evaluation step's, or ``None`` when not compiled.
    hbm_bytes: memory per device of the chip.
    num_devices: devices the step runs on.
    peak_flops: the chip's dense bf16 FLOP/s.
    error: the compiler's out-of-memory message, when it refused the program.
  """

  name: str
  kind: str
  params: int
  batch_size: int
  train: ProgramCost | None
  eval: ProgramCost | None
  hbm_bytes: int
  num_devices: int
  peak_flops: float
  error: str = ""

  @property
  def peak_bytes(self) -> int | None:
    """Per device; when the compiler refused the program, the memory it said it needs."""
    peaks = [p.peak_bytes for p in (self.train, self.eval) if p is not None]
    if self.error:
      needed = _NEEDED.search(self.error)
      if needed:
        peaks.append(int(float(needed.group(1)) * _UNITS[needed.group(2)]))
    return max(peaks) if peaks else None

  @property
  def fits(self) -> bool:
    return not self.error and self.peak_bytes is not None and self.peak_bytes <= self.hbm_bytes

  @property
  def step_seconds(self) -> float | None:
    return self.train.seconds if self.train is not None else None

  @property
  def flops_per_step(self) -> float | None:
    return self.train.flops if self.train is not None else None

  @property
  def examples_per_second(self) -> float | None:
    s = self.step_seconds
    return self.batch_size / s if s else None

  @property
  def mfu(self) -> float | None:
    """Model FLOP utilisation: FLOPs / (step time x devices x peak FLOP/s)."""
    s, f = self.step_seconds, self.flops_per_step
    return f / (s * self.num_devices * self.peak_flops) if s and f else None


@dataclasses.dataclass(frozen=True)
class PlanReport:
  """Every run of a config on a topology, and the overrides that make it fit if it does not."""

  topology: str
  chip: str
  devices: int
  processes: int
  devices_per_process: int
  hbm_bytes: int
  runs: dict[str, RunReport]
  suggestion: str | None = None
  suggested: "PlanReport | None" = None
  devices_per_chip: int = 1

  @property
  def fits(self) -> bool:
    return all(r.fits for r in self.runs.values())

  def to_json(self) -> dict[str, Any]:
    """The summary the command prints as its last line."""
    return {
        "topology": self.topology, "devices": self.devices, "processes": self.processes,
        "runs": {name: {"fits": r.fits, "peak_bytes_per_device": r.peak_bytes,
                        "hbm_bytes_per_device": r.hbm_bytes, "step_seconds": r.step_seconds,
                        "flops_per_step": r.flops_per_step} for name, r in self.runs.items()},
        "suggestion": self.suggestion,
    }

  def table(self) -> str:
    """One row per run: memory per device, fits, FLOPs, estimated time, throughput, MFU."""
    header = ("run", "kind", "params", "batch", "peak/dev", "HBM", "fits", "GFLOP/step",
              "step ms", "examples/s", "MFU", "AR/AG/RS", "eval peak")
    rows = [header]
    for r in self.runs.values():
      t = r.train or r.eval
      time = "-" if r.step_seconds is None else (
          f"{r.step_seconds * 1e3:.2f}" + (" (roofline)" if t.time_source == "roofline" else ""))
      coll = "-" if t is None else "/".join(str(t.collectives[k]) for k in t.collectives)
      rows.append((
          r.name, r.kind, _count(r.params), str(r.batch_size),
          (">" if r.error and r.peak_bytes else "") + _gib(r.peak_bytes),
          _gib(r.hbm_bytes), "yes" if r.fits else "NO",
          "-" if r.flops_per_step is None else f"{r.flops_per_step / 1e9:.1f}", time,
          "-" if r.examples_per_second is None else f"{r.examples_per_second:,.0f}",
          "-" if r.mfu is None else f"{100 * r.mfu:.1f}%", coll,
          _gib(r.eval.peak_bytes if r.eval else None)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"topology {self.topology}: {self.devices} x {self.chip} ({self.processes} "
             f"process(es), {self.devices_per_process} device(s) each)"]
    if self.devices_per_chip > 1:
      lines[0] += (f"; {self.devices_per_chip} devices per chip (one per TensorCore), each with "
                   f"1/{self.devices_per_chip} of the chip's HBM and FLOP/s")
    for i, row in enumerate(rows):
      lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
      if i == 0:
        lines.append("  ".join("-" * w for w in widths))
    for r in self.runs.values():
      if r.error:
        lines.append(f"{r.name}: the compiler refused it: {r.error}")
    return "\n".join(lines)


def _gib(n: int | None) -> str:
  if n is None:
    return "-"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.1f}{unit}"
  return str(n)


# The TPU compiler's refusal: "... the total memory required for HLO temporaries (16.19G) exceeds
# available HBM (15.75G)".
_NEEDED = re.compile(r"required[^(]*\(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|exceeds? .*memory")


def _compile(fn: Any, args: Sequence[Any], topology: Topology):
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # XLA raises JaxRuntimeError.
    text = " ".join(str(e).split())
    if _OOM.search(text):
      return None, text[:300]
    raise
  return analyze(lowered, compiled, topology.device, len(topology.devices)), ""


def _report(program: _runs.RunProgram, topology: Topology, evaluate: bool) -> RunReport:
  train, ev, error = None, None, ""
  if program.total_steps:
    train, error = _compile(program.train, program.train_args, topology)
  if (evaluate or not program.total_steps) and not error:
    ev, error = _compile(program.eval, program.eval_args, topology)
  return RunReport(program.name, program.kind, program.params, program.batch_size, train, ev,
                   topology.device.hbm_bytes, len(topology.devices), topology.device.peak_flops,
                   error)


def _plan_resolved(config: Any, data: Any, topology: Topology, *, evaluate: bool,
                   only: Sequence[str] = ()) -> dict[str, RunReport]:
  return {p.name: _report(p, topology, evaluate)
          for p in _runs.programs(config, data, topology.devices, only)}


def _with(config: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
  """``config`` as dotted keys with ``overrides`` (``{'mesh.fsdp': 4}``) set last, for resolve."""
  return {**config_lib.flatten(config_lib.plain(config)), **overrides}


def format_overrides(overrides: Mapping[str, Any]) -> str:
  """``{'mesh.fsdp': 4}`` -> ``'--config.mesh.fsdp=4'`` (space-separated, in order)."""
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def candidates(config: Any, num_devices: int, has_teacher: bool) -> list[list[dict[str, Any]]]:
  """Groups of override sets, least intrusive group first; within a group, smallest change first.

  The search takes the first group whose largest change fits, then the smallest change of that
  group that still fits.
  """
  fsdp_sizes = [k for k in range(2, num_devices + 1)
                if num_devices % k == 0 and k > int(config.mesh.get("fsdp", 1))]
  mesh = {"mesh.data": -1} if int(config.mesh.get("data", -1)) != -1 else {}
  groups = []
  if fsdp_sizes and has_teacher and not config.shard_teacher:
    groups.append([{**mesh, "mesh.fsdp": k, "shard_teacher": True} for k in fsdp_sizes])
  shard_all = {"shard_teacher": True, "shard_student": True}
  if fsdp_sizes:
    groups.append([{**mesh, "mesh.fsdp": k, **shard_all} for k in fsdp_sizes])
  if "model" in config.mesh:  # Megatron-style splits of both models' layers (Transformers).
    model_sizes = [k for k in range(2, num_devices + 1)
                   if num_devices % k == 0 and k > int(config.mesh.model)]
    if model_sizes:
      groups.append([{**mesh, "mesh.model": k} for k in model_sizes])
  widest = {**mesh, "mesh.fsdp": fsdp_sizes[-1], **shard_all} if fsdp_sizes else {}
  bf16 = {f"{side}.dtype": "bfloat16" for side in ("teacher", "student")
          if config[side].dtype == "float32"}
  if bf16:
    groups.append([{**widest, **bf16}])
  # Rematerialised blocks, for the models that have them (zoo Transformers, HF decoders).
  remat = {f"{side}.remat": True for side in ("teacher", "student")
           if not config[side].remat and (config[side].model in zoo.REMAT_MODELS or
                                          builders.hf_source(config[side]) is not None)}
  if remat:
    groups.append([{**widest, **bf16, **remat}])
  before = {**widest, **bf16, **remat}
  acc = int(config.accumulation_steps)
  accumulate = []
  while config.batch_size % (num_devices * acc * 2) == 0 and len(accumulate) < 3:
    acc *= 2
    accumulate.append({**before, "accumulation_steps": acc})
  if accumulate:
    groups.append(accumulate)
  batch, smaller = config.batch_size, []
  while batch // 2 >= num_devices and batch // 2 % num_devices == 0 and len(smaller) < 3:
    batch //= 2
    smaller.append({**before, "batch_size": batch})
  if smaller:
    groups.append(smaller)
  return groups


def _suggest(config: Any, data: Any, topology: Topology, failing: Sequence[str], *,
             evaluate: bool, num_train: int | None, max_tries: int):
  has_teacher = any(teachers for name, _, teachers in _runs.declarations(config)
                    if name in failing)
  tries, seen = 0, {}

  def fits(overrides):
    nonlocal tries
    tries += 1
    trial, trial_data = _runs.resolve(_with(config, overrides), num_train=num_train)
    seen[format_overrides(overrides)] = reports = _plan_resolved(
        trial, trial_data, topology, evaluate=evaluate, only=failing)
    return all(r.fits for r in reports.values())

  for group in candidates(config, len(topology.devices), has_teacher):
    if tries >= max_tries:
      break
    if not fits(group[-1]):
      continue
    best = group[-1]
    for smaller in reversed(group[:-1]):  # Shrink the change while it still fits.
      if tries >= max_tries or not fits(smaller):
        break
      best = smaller
    return format_overrides(best), seen[format_overrides(best)]
  return None, None


def plan(config: Any, topology: str | Topology, *, evaluate: bool = True, suggest: bool = True,
         num_train: int | None = None, max_tries: int = MAX_TRIES,
         runs: Sequence[str] = ()) -> PlanReport:
  """Compiles every run of ``config`` for ``topology`` and reports memory, FLOPs and time.

  The config is resolved as ``kdjax.main`` resolves it, every run's state is built shape-only
  (``jax.eval_shape``: no parameter is materialised, no example read) and placed by the run's
  own ``MeshRunner`` sharding rules, and its train step (and evaluation step) are AOT-compiled
  for the topology's devices.

  Args:
    config: an ``ml_collections.ConfigDict`` or mapping, as ``kdjax.main`` takes it.
    topology: a name (``'v5e:2x2'``, ``'v5e-16'``, ``'h100:1x8'``; see
      :func:`kdjax.plan.get_topology`) or a :class:`Topology`.
    evaluate: also compile each run's evaluation step (its memory counts for ``fits``).
    suggest: when a run does not fit, search the config's knobs for overrides that fit.
    num_train: the training split's size, for TFDS datasets not prepared on this machine whose
      size kdjax does not know.
    max_tries: candidate configs the suggestion search may compile.
    runs: plan only these of the config's runs (all when empty); an earlier run that a named one
      distils from is still built shape-only as its teacher, not compiled.

  Returns:
    A :class:`PlanReport`; ``report.suggestion`` holds ``--config.<key>=<value>`` overrides that
    fit when some run does not (``None`` when all fit or nothing tried fits).

  Raises:
    kdjax.train.ConfigError: a config the run itself would refuse, or ``runs`` names a run the
      config does not declare.
    kdjax.plan.TopologyError: an unknown topology, or the plan extra is not installed.
  """
  topo = topology if isinstance(topology, Topology) else get_topology(topology)
  resolved, data = _runs.resolve(config, num_train=num_train)
  only = tuple(runs)
  declared = [name for name, _, _ in _runs.declarations(resolved)]
  unknown = [name for name in only if name not in declared]
  if unknown:
    raise ConfigError(f"--runs={','.join(only)}: the config declares no run "
                      f"{', '.join(unknown)}; its runs are {', '.join(declared)}")
  runs = _plan_resolved(resolved, data, topo, evaluate=evaluate, only=only)
  suggestion, suggested = None, None
  failing = [name for name, r in runs.items() if not r.fits]
  if failing and suggest:
    suggestion, reports = _suggest(resolved, data, topo, failing, evaluate=evaluate,
                                   num_train=num_train, max_tries=max_tries)
    if suggestion is not None:
      suggested = PlanReport(topo.name, topo.chip.name, len(topo.devices), topo.processes,
                             topo.devices_per_process, topo.device.hbm_bytes, reports, suggestion,
                             devices_per_chip=topo.devices_per_chip)
  return PlanReport(topo.name, topo.chip.name, len(topo.devices), topo.processes,
                    topo.devices_per_process, topo.device.hbm_bytes, runs, suggestion, suggested,
                    devices_per_chip=topo.devices_per_chip)


def to_json_line(report: PlanReport) -> str:
  return json.dumps(report.to_json(), sort_keys=False)

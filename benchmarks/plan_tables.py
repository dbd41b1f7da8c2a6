r"""The plan tables of docs/tpu.md: ``kdjax plan`` for each CIFAR-100 recipe pair and the LM configs.

Runs ``python -m kdjax.plan`` once per (config, topology) row, one after another, and appends each
command with its output table and JSON line to a Markdown file as soon as it finishes, so a long
run can be stopped and resumed (rows already planned in the file are skipped; failed ones rerun).
Each row records its wall and CPU seconds and the machine's load average when it ended. Compiles
for TPU take minutes each on a small CPU; GPU compiles seconds.

  python benchmarks/plan_tables.py --out=/tmp/plan_tables.md              # every row
  python benchmarks/plan_tables.py --out=/tmp/plan_tables.md --only=h100  # rows matching
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

# The distinct teacher -> student pairs of configs/cifar100/*.py (kdjax.configs.cifar100.PAIRS).
PAIRS = ("resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2", "resnet56-resnet20", "vgg13-vgg8",
         "resnet50-mobilenetv2", "resnet32x4-shufflenetv2")
MAIN_PAIR = PAIRS[0]
# The LM config's teacher at 1.2B parameters.
LM_TEACHER_1B = ("--config.teacher.model_kwargs.d_model=2048",
                 "--config.teacher.model_kwargs.n_layers=24",
                 "--config.teacher.model_kwargs.n_heads=16")
# What the plan suggests for it on v5e:2x2 at batch 128 (docs/tpu.md).
LM_1B_SUGGESTION = ("--config.mesh.fsdp=2", "--config.shard_teacher=True",
                    "--config.shard_student=True")


def _pair(pair: str, topology: str, batch: int, *extra: str) -> tuple[str, ...]:
  # One run per pair: the distill run with plain KD (its teacher is built shape-only, not
  # compiled); the teacher and student baselines are the same networks' supervised steps.
  return (f"--config=configs/cifar100/kd.py:{pair}", f"--topology={topology}",
          f"--config.batch_size={batch}", "--runs=student_kd", *extra)


def rows() -> list[tuple[str, ...]]:
  """Each row: the arguments of ``kdjax plan``, in the order they are planned: first the rows
  that cover each topology once, then the remaining pairs, GPU before TPU (a TPU compile takes
  minutes on a small CPU; the remaining TPU pair rows leave out the evaluation step with
  ``--noeval``). 64 images per chip, the protocol's batch per device."""
  out = [("--config=configs/cifar100/kd.py", "--topology=v5e:2x2", "--config.batch_size=256"),
         ("--config=configs/cifar100/kd.py", "--topology=h100:1x2", "--config.batch_size=128"),
         (f"--config=configs/cifar100/kd.py:{MAIN_PAIR}", "--topology=h100:1x8",
          "--config.batch_size=512"),
         _pair(MAIN_PAIR, "v4:2x2x1", 256),
         ("--config=configs/lm/distill.py", "--topology=v5e:4x4"),
         ("--config=configs/lm/distill.py", "--topology=h100:2x8", "--config.batch_size=256"),
         ("--config=configs/lm/distill.py", "--topology=h100:2x8", "--config.batch_size=256",
          *LM_TEACHER_1B),
         ("--config=configs/lm/distill.py", "--topology=v5e:2x2", *LM_TEACHER_1B),
         # docs/tpu.md's "A teacher that fills the chip": does not fit (exit 2, with the
         # suggestion), then the same with the suggestion pasted back.
         ("--config=configs/lm/distill.py", "--topology=v5e:2x2", *LM_TEACHER_1B,
          "--config.batch_size=128", "--runs=teacher", "--noeval"),
         ("--config=configs/lm/distill.py", "--topology=v5e:2x2", *LM_TEACHER_1B,
          "--config.batch_size=128", "--runs=teacher", "--noeval", *LM_1B_SUGGESTION),
         ("--config=configs/lm/gkd.py", "--topology=h100:2x8"),
         ("--config=configs/lm/gkd.py", "--topology=v5e:4x4")]
  out += [_pair(pair, "h100:1x8", 512) for pair in PAIRS[1:]]
  for topology in ("v5e:2x2", "v4:2x2x1"):
    out += [_pair(pair, topology, 256, "--noeval") for pair in PAIRS[1:]]
  return out


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="Markdown file the rows are appended to.")
  parser.add_argument("--only", default="", help="Run only rows whose command contains this.")
  parser.add_argument("--timeout", type=float, default=3600, help="Seconds per row.")
  args = parser.parse_args()
  for row in rows():
    done = open(args.out).read() if os.path.exists(args.out) else ""  # Another run may add rows.
    command = "python -m kdjax.plan " + " ".join(row)
    finished = any(f"`{command}` (exit {code}," in done for code in (0, 2))
    if args.only not in command or finished:
      continue
    started = time.perf_counter()
    cpu = _child_cpu()
    try:
      result = subprocess.run([sys.executable, "-m", "kdjax.plan", *row], capture_output=True,
                              text=True, timeout=args.timeout, check=False, cwd=REPO)
      output, code = result.stdout.strip(), result.returncode
      if code not in (0, 2):
        output += "\n" + result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    except subprocess.TimeoutExpired:
      output, code = f"(timed out after {args.timeout:.0f} s)", -1
    seconds, cpu = time.perf_counter() - started, _child_cpu() - cpu
    load = os.getloadavg()[0]
    with open(args.out, "a") as f:
      f.write(f"`{command}` (exit {code}, {seconds:.0f} s wall, {cpu:.0f} s CPU, load "
              f"{load:.1f})\n\n```\n{output}\n```\n\n")
    print(f"{seconds:7.0f} s  exit {code}  {command}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

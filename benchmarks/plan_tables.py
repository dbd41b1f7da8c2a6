r"""The plan tables of docs/tpu.md: ``kdjax plan`` for each CIFAR-100 recipe pair and the LM config.

Runs ``python -m kdjax.plan`` once per (config, topology) row, one after another, and appends each
command with its output table and JSON line to a Markdown file as soon as it finishes, so a long
run can be stopped and resumed (rows already planned in the file are skipped; failed ones rerun). Compiles for TPU take
minutes each on a small CPU; GPU compiles seconds.

  python benchmarks/plan_tables.py --out=/tmp/plan_tables.md              # every row
  python benchmarks/plan_tables.py --out=/tmp/plan_tables.md --only=h100  # rows matching
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PAIRS = ("resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2", "resnet56-resnet20", "vgg13-vgg8",
         "resnet50-mobilenetv2", "resnet32x4-shufflenetv2")
LM_TEACHER_1B = ("--config.teacher.model_kwargs.d_model=2048",
                 "--config.teacher.model_kwargs.n_layers=24",
                 "--config.teacher.model_kwargs.n_heads=16")


def rows() -> list[tuple[str, ...]]:
  """Each row: the arguments of ``kdjax plan``. GPU rows first (seconds to minutes each); the
  TPU CIFAR rows compile the train steps only (``--noeval``), each TPU compile taking minutes."""
  out = [("--config=configs/cifar100/kd.py", "--topology=v5e:2x2", "--config.batch_size=256"),
         ("--config=configs/cifar100/kd.py", "--topology=h100:1x2", "--config.batch_size=128"),
         ("--config=configs/lm/distill.py", "--topology=v5e:4x4"),
         ("--config=configs/lm/distill.py", "--topology=v5e:2x2", *LM_TEACHER_1B)]
  for topology in ("h100:2x8", "v5e:4x4"):
    out.append(("--config=configs/lm/distill.py", f"--topology={topology}",
                "--config.batch_size=256"))
    out.append(("--config=configs/lm/distill.py", f"--topology={topology}",
                "--config.batch_size=256", *LM_TEACHER_1B))
  for pair in PAIRS:
    out.append((f"--config=configs/cifar100/kd.py:{pair}", "--topology=h100:1x8",
                "--config.batch_size=512"))
  for topology in ("v5e:2x2", "v4:2x2x1"):
    for pair in PAIRS:
      out.append((f"--config=configs/cifar100/kd.py:{pair}", f"--topology={topology}",
                  "--config.batch_size=256", "--noeval"))
  return out


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
    try:
      result = subprocess.run([sys.executable, "-m", "kdjax.plan", *row], capture_output=True,
                              text=True, timeout=args.timeout, check=False)
      output, code = result.stdout.strip(), result.returncode
      if code not in (0, 2):
        output += "\n" + result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    except subprocess.TimeoutExpired:
      output, code = f"(timed out after {args.timeout:.0f} s)", -1
    seconds = time.perf_counter() - started
    with open(args.out, "a") as f:
      f.write(f"`{command}` (exit {code}, {seconds:.0f} s on this machine)\n\n```\n{output}\n"
              "```\n\n")
    print(f"{seconds:7.0f} s  exit {code}  {command}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Distillation methods for a byte-level language model on real text, over seeds: one table.

One teacher and one student, the models of ``configs/lm/gkd.py`` (zoo ``decoder``: the teacher
2 layers x 128, the student 1 layer x 48; bytes as tokens, 32-token rows) on ``--data``, by
default ``text:stdlib_corpus`` (the whole Python standard library's source, about 10 MB, 10% of
the files for validation),
and one row per method, each trained for ``--steps`` updates from the same initialisation and
data order as the student alone:

* ``student``: the student alone (next-token cross-entropy);
* ``forward_kd``, ``reverse_kd``, ``jsd``, ``skew_kl``: ``0.5 CE + 0.5 D`` per token (T = 1,
  the teacher run inside the step) with ``D`` = KL(teacher || student), KL(student ||
  teacher), the Jensen-Shannon divergence, the skew KL (alpha 0.1);
* ``seq_kd``: sequence-level KD (kind ``on_policy``, ``lmbda = 0``, ``seq_kd_prob = 1``):
  every row's continuation is sampled from the teacher (T = 1) after its first token, and the
  student fits the teacher's distribution on it (forward KL, ``beta = 0``);
* ``topk_cache``: ``0.5 CE + 0.5`` sparse KD from the teacher's top-8 logits, computed once
  for the training split (``kdjax.lm.TeacherCache``); no teacher forward during training;
* ``sampled_cache``: ``0.5 CE + 0.5`` KD from 8 entries per token sampled from the teacher
  (Gemma 3's offline targets), through ``config.teacher_cache`` (``targets='sampled'``);
* ``gkd_05``, ``gkd_1``: GKD (kind ``on_policy``, ``beta = 0``), continuations sampled from
  the current student with probability ``lmbda`` = 0.5 or 1;
* ``xtok``: cross-tokenizer distillation, ``configs/lm/cross_tokenizer.py`` at the same scale
  with the table's teacher loaded: its BPE student alone and its ``student_xtok``.

The teacher is trained once (seed 0, ``WORKDIR/teacher``) and loaded by every row (run kind
``load``, ``config.teacher.checkpoint``); each ``(row, seed)`` runs in its own workdir
``WORKDIR/<row>/seed_<s>`` and writes ``row.json`` there (validation bits per byte, perplexity,
wall and CPU time, the command), so running the same command again skips finished rows and
resumes unfinished ones. The table (mean +- std over seeds) is printed and written to
``WORKDIR/table.md``.

  python examples/lm_table.py --workdir=/tmp/lm_table                  # every row, seeds 0 1 2
  python examples/lm_table.py --workdir=/tmp/lm_table --rows jsd --seeds 0
  python examples/lm_table.py --workdir=/tmp/lm_table --table_only      # the table from row.json
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

import _runs

SEEDS = (0, 1, 2)
TOPK = 8
ROW_FILE = "row.json"
TEACHER_SEED = 0
DATA = "text:stdlib_corpus"  # The whole standard library's source, split by file.


@dataclasses.dataclass(frozen=True)
class Row:
  """One method of the table.

  Attributes:
    name: the row's name, its directory and its run's name.
    label: what the table calls it.
    decl: the row's run declaration beside the loaded teacher (``None``: not a run of the
      gkd config's models; see ``how``).
    objective: the config objective of a ``distill`` row (``None``: the config's default).
    how: ``'run'`` (the gkd config's models with ``decl``), ``'topk'`` (a top-k teacher cache
      trained on ``kdjax.train.fit``), ``'sampled'`` (``config.teacher_cache`` with sampled
      targets) or ``'xtok'`` (``configs/lm/cross_tokenizer.py``).
  """

  name: str
  label: str
  decl: dict[str, Any] | None = None
  objective: dict[str, Any] | None = None
  how: str = "run"


def _divergence(kind: str, **options: Any) -> dict[str, Any]:
  return {"ce": {"kind": "cross_entropy", "weight": 0.5, "label_key": "targets"},
          "kd": {"kind": kind, "weight": 0.5, "temperature": 1.0, **options}}


def _distill(name: str) -> dict[str, Any]:
  return {"name": name, "kind": "distill", "model": "student", "teachers": ("teacher",)}


def _on_policy(name: str, **fields: Any) -> dict[str, Any]:
  return {"name": name, "kind": "on_policy", "model": "student", "teachers": ("teacher",),
          "beta": 0.0, "temperature": 1.0, "prompt_length": 1, **fields}


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("student", "student alone (CE)",
        {"name": "student", "kind": "supervised", "model": "student"}),
    Row("forward_kd", "forward KD, KL(t‖s)", _distill("forward_kd"), _divergence("kd")),
    Row("reverse_kd", "reverse KD, KL(s‖t)", _distill("reverse_kd"), _divergence("reverse_kd")),
    Row("jsd", "JSD", _distill("jsd"), _divergence("jensen_shannon")),
    Row("skew_kl", "skew KL (alpha 0.1)", _distill("skew_kl"), _divergence("skew_kl", alpha=0.1)),
    Row("seq_kd", "sequence-level KD (teacher-sampled rows)",
        _on_policy("seq_kd", lmbda=0.0, seq_kd_prob=1.0)),
    Row("topk_cache", f"top-{TOPK} teacher cache", objective=_divergence("kd"), how="topk"),
    Row("sampled_cache", f"sampled-{TOPK} teacher cache", _distill("sampled_cache"),
        _divergence("kd"), how="sampled"),
    Row("gkd_05", "GKD lambda 0.5", _on_policy("gkd_05", lmbda=0.5)),
    Row("gkd_1", "GKD lambda 1", _on_policy("gkd_1", lmbda=1.0)),
    Row("xtok", "cross-tokenizer (BPE student, byte teacher)", how="xtok"),
)}


def base_config(seed: int, *, steps: int, teacher_steps: int, data: str = DATA) -> Any:
  """``configs/lm/gkd.py`` on ``data`` with ``seed`` and the step counts, evaluated at the last
  step."""
  config = _runs.get_config("lm/gkd")
  config.data.name = data
  config.seed = seed
  config.total_steps = steps
  config.teacher.total_steps = teacher_steps
  config.eval_every = 0
  config.checkpoint_every = max(50, steps // 2)
  config.log_every = 25
  config.progress_bar = False
  return config


def teacher_config(*, teacher_steps: int, steps: int, data: str = DATA) -> Any:
  """The config of the one teacher (seed ``TEACHER_SEED``)."""
  config = base_config(TEACHER_SEED, steps=steps, teacher_steps=teacher_steps, data=data)
  config.checkpoint_every = max(100, teacher_steps // 4)
  config.runs = ({"name": "teacher", "kind": "supervised", "model": "teacher"},)
  return config


def row_config(row: Row, seed: int, teacher: str, *, steps: int, teacher_steps: int,
               data: str = DATA) -> Any:
  """The config of ``row`` at ``seed``: the trained ``teacher`` run directory loaded (kind
  ``load``), then the row's run. Raises ``ValueError`` for rows that are not gkd-config runs."""
  if row.how == "xtok":
    raise ValueError(f"row {row.name!r} runs configs/lm/cross_tokenizer.py as it is")
  config = base_config(seed, steps=steps, teacher_steps=teacher_steps, data=data)
  if row.objective is not None:
    config.objective = row.objective
  if row.how == "topk":  # Trained on kdjax.train.fit like the config's student (its optimizer).
    config.teacher.checkpoint = teacher
    config.runs = ({"name": "teacher", "kind": "load"}, ROWS["student"].decl)
    return config
  if row.decl["kind"] == "supervised":
    config.runs = (row.decl,)
    return config
  config.teacher.checkpoint = teacher
  config.runs = ({"name": "teacher", "kind": "load"}, row.decl)
  if row.how == "sampled":
    _sampled_cache(config)
  return config


def _sampled_cache(config: Any) -> None:
  """Sampled offline targets (Gemma 3) through ``config.teacher_cache``: ``TOPK`` entries per
  token, built before the run in the row's workdir (the draws depend on ``config.seed``)."""
  config.teacher_cache.enabled = True
  config.teacher_cache.targets = "sampled"
  config.teacher_cache.k = TOPK


def xtok_config(seed: int, teacher: str, *, steps: int, data: str = DATA) -> Any:
  """``configs/lm/cross_tokenizer.py`` at the table's scale: ``seed``, ``steps`` student
  updates, the gkd config's rows (32 bytes) and the table's trained ``teacher`` loaded instead
  of trained (the config's teacher has the same model)."""
  config = _runs.get_config("lm/cross_tokenizer")
  config.data.name = data
  config.seed = seed
  config.total_steps = steps
  config.data.sequence_length = int(_runs.get_config("lm/gkd").data.sequence_length)
  config.eval_every = 0
  config.checkpoint_every = max(50, steps // 2)
  config.progress_bar = False
  config.teacher.checkpoint = teacher
  runs = [dict(r) for r in config.runs]
  if runs[0].get("name") != "teacher":
    raise ValueError(f"configs/lm/cross_tokenizer.py: its first run is {runs[0]}, not 'teacher'")
  config.runs = ({"name": "teacher", "kind": "load"}, *runs[1:])
  return config


def bits_per_byte(entry: dict[str, Any]) -> float:
  """Validation bits per byte of a results entry: its ``bits_per_byte``, else (bytes are the
  tokens) ``log2(perplexity)``."""
  if entry.get("bits_per_byte") is not None:
    return float(entry["bits_per_byte"])
  return math.log2(float(entry["perplexity"]))


def _command(args: Any, row: str, seed: int) -> str:
  return (f"python examples/lm_table.py --workdir={args.workdir} --rows {row} --seeds {seed} "
          f"--steps {args.steps} --teacher_steps {args.teacher_steps} --data {args.data}")


def _timed(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float, float]:
  wall, cpu = time.time(), time.process_time()
  out = fn()
  return out, time.time() - wall, time.process_time() - cpu


def train_teacher(args: Any) -> tuple[str, dict[str, Any]]:
  """Trains (or resumes, or reuses) the teacher; returns its run directory and its entry."""
  import kdjax  # pylint: disable=g-import-not-at-top
  path = os.path.join(args.workdir, "teacher")
  config = teacher_config(teacher_steps=args.teacher_steps, steps=args.steps, data=args.data)
  record = os.path.join(path, ROW_FILE)
  if not os.path.exists(record):
    results, wall, cpu = _timed(lambda: kdjax.train.train_and_evaluate(config, path))
    entry = results["teacher"]
    _write(record, {"row": "teacher", "seed": TEACHER_SEED, "bits_per_byte": bits_per_byte(entry),
                    "perplexity": entry["perplexity"], "run_time_s": entry.get("time_s"),
                    "wall_s": wall, "cpu_s": cpu, "steps": args.teacher_steps,
                    "command": _command(args, "teacher", TEACHER_SEED)})
  with open(record) as f:
    return os.path.join(path, "teacher"), json.load(f)


@contextlib.contextmanager
def _claim(path: str):
  """Yields whether this process holds the row directory's claim (``flock``, dropped when the
  process ends in any way), so several processes of the script can share one table."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "claim.lock"), "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True


def _write(path: str, record: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def run_row(row: Row, seed: int, teacher: str, args: Any) -> dict[str, Any]:
  """Runs one ``(row, seed)`` in ``WORKDIR/<row>/seed_<seed>``; returns its record."""
  import kdjax  # pylint: disable=g-import-not-at-top
  path = os.path.join(args.workdir, row.name, f"seed_{seed}")
  command = _command(args, row.name, seed)
  if row.how == "xtok":
    config = xtok_config(seed, teacher, steps=args.steps, data=args.data)
    results, wall, cpu = _timed(lambda: kdjax.train.train_and_evaluate(config, path))
    entry = results["student_xtok"]
    alone = results.get("student", {})
    extra = {"student_bpe_alone_bits_per_byte": (bits_per_byte(alone) if alone else None),
             "teacher_bits_per_byte": (bits_per_byte(results["teacher"])
                                       if "teacher" in results else None)}
  else:
    config = row_config(row, seed, teacher, steps=args.steps, teacher_steps=args.teacher_steps,
                        data=args.data)
    if row.how == "topk":
      import lm_distill  # pylint: disable=g-import-not-at-top
      entry, wall, cpu = _timed(lambda: lm_distill.cached_topk_run(config, path, TOPK))
    else:
      results, wall, cpu = _timed(lambda: kdjax.train.train_and_evaluate(config, path))
      entry = results[row.name]
    extra = {}
  record = {"row": row.name, "label": row.label, "seed": seed,
            "bits_per_byte": bits_per_byte(entry),
            "bits_per_byte_from": "results" if entry.get("bits_per_byte") is not None else
                                  "log2(perplexity)",
            "perplexity": entry.get("perplexity"), "run_time_s": entry.get("time_s"),
            "validation_tokens": entry.get("count"), "wall_s": wall, "cpu_s": cpu,
            "steps": args.steps, "command": command, **extra}
  _write(os.path.join(path, ROW_FILE), record)
  return record


def load_records(workdir: str) -> dict[str, list[dict[str, Any]]]:
  """Every finished ``row.json`` under ``workdir``, by row, in seed order."""
  out: dict[str, list[dict[str, Any]]] = {}
  for name in ("teacher", *ROWS):
    base = os.path.join(workdir, name)
    if not os.path.isdir(base):
      continue
    paths = ([os.path.join(base, ROW_FILE)] if name == "teacher" else
             [os.path.join(base, d, ROW_FILE) for d in sorted(os.listdir(base))])
    for p in paths:
      if os.path.exists(p):
        with open(p) as f:
          out.setdefault(name, []).append(json.load(f))
  return out


def table(records: dict[str, list[dict[str, Any]]], seeds: tuple[int, ...]) -> str:
  """The markdown table: bits per byte, mean +- std (sample, over the seeds found), whether the
  mean beats the student alone's on the same seeds, wall and CPU time per run."""
  lines = ["| method | validation bits/byte, mean ± std | seeds | vs student alone | "
           "wall s per run (CPU s) |",
           "| --- | ---: | ---: | --- | ---: |"]
  alone = {r["seed"]: r["bits_per_byte"] for r in records.get("student", [])}

  def line(label, rs, value, verdict=""):
    bpb = np.array([value(r) for r in rs])
    std = f" ± {bpb.std(ddof=1):.4f}" if len(bpb) > 1 else ""
    wall, cpu = np.mean([r["wall_s"] for r in rs]), np.mean([r["cpu_s"] for r in rs])
    return (f"| {label} | {bpb.mean():.4f}{std} | {len(rs)} | {verdict} | "
            f"{wall:.0f} ({cpu:.0f}) |")

  def verdict(rs, base):
    pairs = [(r["bits_per_byte"], base(r)) for r in rs if base(r) is not None]
    if not pairs:
      return ""
    ours, theirs = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
    return f"{'better' if ours < theirs else 'NOT better'} ({ours - theirs:+.4f})"

  for name in ("teacher", *ROWS):
    rs = [r for r in records.get(name, []) if name == "teacher" or r["seed"] in seeds]
    label = "teacher (2 x 128, trained once, seed 0)" if name == "teacher" else ROWS[name].label
    if not rs:
      lines.append(f"| {label} | not run | 0 | | |")
      continue
    if name == "xtok":
      base = lambda r: r.get("student_bpe_alone_bits_per_byte")
      if all(base(r) is not None for r in rs):
        lines.append(line("student alone on BPE-512 tokens (the next row's baseline)", rs, base))
      lines.append(line(label, rs, lambda r: r["bits_per_byte"],
                        verdict(rs, base).replace(")", " vs BPE alone)")))
      continue
    judged = name not in ("teacher", "student")
    lines.append(line(label, rs, lambda r: r["bits_per_byte"],
                      verdict(rs, lambda r: alone.get(r["seed"])) if judged else ""))
  return "\n".join(lines)


def main():
  args = _runs.parser(__doc__, seeds=list(SEEDS), teacher_steps=800,
                      steps=(300, "student steps of every row"),
                      rows=(",".join(ROWS), "comma-separated rows to run (order kept)"),
                      table_only=(0, "1: only print the table of the finished rows"),
                      data=(DATA, "the bundled text: text:stdlib_corpus (the whole standard "
                                  "library, split by file) or text:stdlib (15 modules)")
                      ).parse_args()
  if not args.workdir:
    sys.exit("lm_table.py: --workdir is required (each row writes WORKDIR/<row>/seed_<s>/)")
  args.workdir = os.path.abspath(args.workdir)
  names = [n for n in args.rows.replace(" ", ",").split(",") if n]
  unknown = sorted(set(names) - set(ROWS))
  if unknown:
    sys.exit(f"lm_table.py: --rows has unknown rows {unknown}; use some of {list(ROWS)}")
  print(f"workdir: {args.workdir}", flush=True)
  from kdjax.train.errors import Preempted  # pylint: disable=g-import-not-at-top
  if not args.table_only:
    start = time.time()
    print(f"load: {os.getloadavg()}", flush=True)
    teacher, record = train_teacher(args)
    print(f"teacher: {record['bits_per_byte']:.4f} bits/byte", flush=True)
    for seed in args.seeds:
      for name in names:
        row = ROWS[name]
        path = os.path.join(args.workdir, name, f"seed_{seed}")
        if os.path.exists(os.path.join(path, ROW_FILE)):
          continue
        with _claim(path) as mine:
          if not mine:  # Another process of this script runs it now.
            print(f"seed {seed}  {name:<14} skipped: running in another process", flush=True)
            continue
          try:
            r = run_row(row, seed, teacher, args)
          except Preempted:  # SIGTERM / Ctrl-C: stop here; the same command resumes the row.
            raise
          except Exception as e:  # pylint: disable=broad-except  # one row's failure ends no other.
            print(f"seed {seed}  {name:<14} FAILED: {type(e).__name__}: {str(e)[:300]}",
                  flush=True)
            continue
        print(f"seed {seed}  {name:<14} {r['bits_per_byte']:.4f} bits/byte  "
              f"({r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU)", flush=True)
    print(f"load: {os.getloadavg()}; total {time.time() - start:.0f} s", flush=True)
  out = table(load_records(args.workdir), tuple(args.seeds))
  print(out)
  with open(os.path.join(args.workdir, "table.md"), "w") as f:
    seeds = " ".join(map(str, args.seeds))
    f.write(out + "\n\nCommands:\n" + "\n".join(
        f"- {n}: `{_command(args, n, 0).replace(' --seeds 0', ' --seeds ' + seeds)}`"
        for n in ROWS) + "\n")


if __name__ == "__main__":
  main()

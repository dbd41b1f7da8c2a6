"""``kdjax export``: exports a finished run of a workdir, as the ``export`` run kind does.

  kdjax export --workdir=W --run=student_kd [--formats=stablehlo,onnx] [--quantize=auto]
               [--batch_size=N] [--allow_partial]

Rebuilds the run's model from ``W/config.json`` (the config the run was trained with), reads its
final checkpoint and writes ``W/export/<run>.*`` and ``W/export/manifest.json`` through
:func:`kdjax.export.export_model` (:func:`kdjax.train.kinds.export.export_run`). A run that has
not reached its last step is refused unless ``--allow_partial``; the entry names the step that
was exported. Every failure is one ``kdjax: error:`` line and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Sequence

import ml_collections

from kdjax import export as export_lib
from kdjax import workdir as contract
from kdjax.train import describe
from kdjax.train import kinds
from kdjax.train import pipeline
from kdjax.train import quiet
from kdjax.train.errors import CheckpointError, ConfigError, WorkdirError
from kdjax.train.kinds import export as export_kind

__all__ = ["export_workdir_run", "main"]


def _check_arguments(formats: Sequence[str], quantize: str, batch_size: int | None) -> None:
  unknown = [f for f in formats if f not in export_lib.FORMATS]
  if unknown or not formats:
    raise ConfigError(f"--formats={','.join(formats)}: {', '.join(map(repr, unknown)) or 'empty'}"
                      f" is not an export format; use a comma-separated subset of "
                      f"{','.join(export_lib.FORMATS)}")
  if quantize not in ("auto", "none", "int8"):
    raise ConfigError(f"--quantize={quantize!r}: use auto, none or int8")
  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size}: a fixed batch size must be >= 1 (leave it out "
                      "for a symbolic batch dimension)")


def _read_workdir(workdir: str) -> dict[str, Any]:
  if not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} does not exist; pass the --workdir of a finished "
                       "training command")
  try:
    saved = contract.read_config(workdir)
  except contract.UnreadableFile as e:
    raise WorkdirError(f"{e}; --workdir must be a workdir written by python -m kdjax.main"
                       ) from None
  if not saved:
    raise WorkdirError(f"--workdir={workdir} has no {contract.CONFIG_FILE}, so the models of its "
                       "runs cannot be rebuilt; pass the --workdir of a training command "
                       "(python -m kdjax.main writes config.json before it trains)")
  return saved


def _check_writable(directory: str) -> None:
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as e:
    raise WorkdirError(f"cannot write the export to {directory} ({e.strerror or e}); make the "
                       "workdir writable or copy it somewhere writable") from None


def _checkpoint_step(workdir: str, decl: Any, config: Any, allow_partial: bool) -> tuple[str,
                                                                                         int]:
  """The checkpoint directory to export from and its step."""
  run, total = decl.name, decl.total_steps(config)
  directory = contract.checkpoint_dir(workdir, run)
  steps = sorted(int(p) for p in (os.listdir(directory) if os.path.isdir(directory) else ())
                 if p.isdigit() and os.path.isdir(os.path.join(directory, p, "state")))
  if not steps:
    raise CheckpointError(f"run {run!r} has no checkpoint in {directory} (not trained yet, or "
                          "its checkpoints were deleted); run the training command on this "
                          "workdir to (re)train it, then export")
  if steps[-1] < total and not allow_partial:
    raise CheckpointError(f"run {run!r} is unfinished: its latest checkpoint is step "
                          f"{steps[-1]} of {total}; finish it (rerun the training command on "
                          f"this workdir) or pass --allow_partial to export step {steps[-1]}")
  step = total if total in steps else steps[-1]
  return os.path.join(directory, str(step)), step


def export_workdir_run(workdir: str | os.PathLike, run: str, *,
                       formats: Sequence[str] = export_lib.FORMATS, quantize: str = "auto",
                       batch_size: int | None = None,
                       allow_partial: bool = False) -> dict[str, Any]:
  """Exports the final model of ``run`` in ``workdir``; returns its manifest entry.

  Args:
    workdir: a workdir of ``python -m kdjax.main``.
    run: the run's name (``student_kd``, ``student_kd_pruned``, ``student_kd_int8``, ...).
    formats: the formats to write.
    quantize: ``'auto'``: the form the run's kind exports (integer weights for a quantized
      run); ``'none'``: the float model; ``'int8'``: the integer-weight form with
      ``config.compress``'s rules (artifacts ``<run>_ptq`` unless the run is quantized itself).
    batch_size: None (symbolic batch) or fixed (>= 1).
    allow_partial: export the latest checkpoint of a run that has not reached its last step.

  Returns:
    The manifest entry, with ``step``: the checkpoint's step.

  Raises:
    ConfigError, WorkdirError, CheckpointError: a message naming the fix.
  """
  formats = tuple(formats)
  _check_arguments(formats, quantize, batch_size)
  workdir = os.path.abspath(os.fspath(workdir))
  saved = _read_workdir(workdir)
  config, run_data = pipeline.resolve(ml_collections.ConfigDict(saved))
  decls = {d.name: d for d in kinds.declarations(config)}
  trained = [d for d in decls.values() if d.total_steps(config) > 0 and not d.external and
             d.kind != "export"]
  if run not in decls or decls[run] not in trained:
    names = ", ".join(d.name for d in trained) or "-"
    what = (f"run {run!r} of {workdir} trains no model of its own"
            if run in decls else f"{workdir} has no run {run!r}")
    raise ConfigError(f"--run={run}: {what}; export one of its trained runs: {names}")
  path, step = _checkpoint_step(workdir, decls[run], config, allow_partial)
  _check_writable(contract.run_dir(workdir, contract.EXPORT_DIR))
  ctx = kinds.Context(config=config, data=run_data, workdir=workdir, decls=decls)
  ctx.load(run, path, what=f"run {run!r}, checkpoint {step}",
           fix=(f"it is damaged or incomplete (truncated, or files deleted): move {path} aside "
                "and rerun the training command on this workdir (it resumes from the previous "
                "checkpoint), then export again"))
  entry = export_kind.export_run(ctx, run, contract.run_dir(workdir, contract.EXPORT_DIR),
                                 formats=formats, batch_size=batch_size or 0, form=quantize)
  return {**entry, "step": step}


class _Parser(argparse.ArgumentParser):
  """Usage errors as one ``kdjax: error:`` line, like the rest of the command."""

  def error(self, message: str):
    raise ConfigError(f"kdjax export: {message} (see kdjax export --help)")


def main(argv: Sequence[str] | None = None) -> int:
  """``kdjax export --workdir=W --run=student_kd [--formats=stablehlo,onnx] [--quantize=auto]
  [--batch_size=N] [--allow_partial]``: exports a finished run and prints its manifest entry."""
  parser = _Parser(prog="kdjax export", description=main.__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--run", default="student_kd")
  parser.add_argument("--formats", default=",".join(export_lib.FORMATS))
  parser.add_argument("--quantize", default="auto", choices=("auto", "none", "int8"))
  parser.add_argument("--batch_size", type=int, default=None,
                      help="fixed batch size of the artifacts (default: symbolic)")
  parser.add_argument("--allow_partial", action="store_true",
                      help="export the latest checkpoint of a run that has not finished")
  parser.add_argument("--verbose", action="store_true", help="on errors, print the traceback")
  args = None
  try:
    args = parser.parse_args(argv)
    if not args.verbose:
      quiet.start_backends()
    formats = tuple(f for f in args.formats.split(",") if f)
    entry = export_workdir_run(args.workdir, args.run, formats=formats, quantize=args.quantize,
                               batch_size=args.batch_size, allow_partial=args.allow_partial)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    if args is not None and args.verbose:
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
    workdir = getattr(args, "workdir", None) or "."
    print(f"kdjax: error: {describe.describe(e, workdir)}", file=sys.stderr, flush=True)
    return describe.exit_status(e)
  print(f"exported run {args.run!r} at step {entry['step']} to "
        f"{contract.run_dir(os.path.abspath(args.workdir), contract.EXPORT_DIR)}",
        file=sys.stderr, flush=True)
  print(json.dumps({args.run: entry}, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

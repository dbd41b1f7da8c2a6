"""What a run started from, recorded in ``WORKDIR/<run>/inputs.json`` and checked on resume.

A run's trajectory depends on three inputs besides its own checkpoints: the config (its keys
other than the runtime ones), the data, and the trained models it reads (its teachers, the run
it starts from). When a run starts, :func:`check_or_record` writes them; when it resumes, it
compares them with the recorded ones and refuses other inputs with one line naming what changed
and the two ways out (restore it, or a new workdir). Without this a teacher checkpoint replaced
between a kill and the resume would teach the first steps with one teacher and the rest with
another.

* config: the flattened resolved config without its runtime keys;
* data: :meth:`fingerprint` of the run data (the dataset's description and a sample of
  examples of each split);
* each model the run reads: its checkpoint's step and the SHA-256 of the checkpoint's files
  (a trained run's final checkpoint, ``config.teacher.checkpoint``'s directory or file).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from kdjax import workdir as contract
from kdjax.train import config as config_lib
from kdjax.train.errors import WorkdirError

_CHUNK = 1 << 20


def checkpoint_identity(path: str | os.PathLike) -> dict[str, Any]:
  """``{"path", "step", "sha256"}`` of a checkpoint: a step directory, a run or checkpoints
  directory (its latest step) or a file; the hash covers every file's relative path and bytes."""
  from kdjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  step = None
  if os.path.isdir(path):
    try:
      found = str(ckpt_lib.find_checkpoint(path))
      path, step = found, int(os.path.basename(found))
    except Exception:  # pylint: disable=broad-except  # Another layout: hash what is there.
      pass
  digest = hashlib.sha256()
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  for name in files:
    digest.update(os.path.relpath(name, path).encode() + b"\0")
    with open(name, "rb") as f:
      while block := f.read(_CHUNK):
        digest.update(block)
  return {"path": path, "step": step, "sha256": digest.hexdigest()}


def run_inputs(ctx: Any, decl: Any) -> dict[str, Any]:
  """The inputs of run ``decl`` of the pipeline ``ctx`` (a ``kinds.Context``, real models)."""
  flat = config_lib.flatten(json.loads(config_lib.to_json(ctx.config)))
  config = {k: v for k, v in sorted(flat.items()) if not _runtime(k)}
  models = {}
  for run in decl.read_runs():
    path, _ = ctx.decls[run].checkpoint(ctx)
    models[run] = checkpoint_identity(path)
  return {"config": config, "data": data_fingerprint(ctx.data), "models": models}


def data_fingerprint(run_data: Any) -> str:
  fingerprint = getattr(run_data, "fingerprint", None)
  return fingerprint() if fingerprint is not None else ""


def _runtime(key: str) -> bool:
  return any(key == r or key.startswith(r + ".") for r in config_lib.RUNTIME_KEYS)


def _short(identity: Mapping[str, Any] | None) -> str:
  if not identity:
    return "absent"
  step = identity.get("step")
  return (f"{'step ' + str(step) + ', ' if step is not None else ''}"
          f"sha256 {str(identity.get('sha256', ''))[:12]}")


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
  """What differs between two records of :func:`run_inputs`, one phrase each."""
  out = []
  for run in sorted(set(saved.get("models", {})) | set(now.get("models", {}))):
    a, b = saved.get("models", {}).get(run), now.get("models", {}).get(run)
    if (a or {}).get("sha256") != (b or {}).get("sha256"):
      where = (b or a or {}).get("path", "?")
      out.append(f"the model of run {run!r} ({where}) was {_short(a)} and is now {_short(b)}")
  if saved.get("data") != now.get("data"):
    name = now.get("config", {}).get("data.name", "?")
    out.append(f"the data (config.data.name={name!r}) has another fingerprint "
               f"({str(saved.get('data'))[:12]} -> {str(now.get('data'))[:12]})")
  a, b = saved.get("config", {}), now.get("config", {})
  keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  if keys:
    shown = ", ".join(f"config.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4])
    out.append(f"the config ({shown}{' and more' if len(keys) > 4 else ''})")
  return out


def check_or_record(workdir: str, ctx: Any, decl: Any) -> None:
  """Records run ``decl``'s inputs when it starts; refuses a resume with other inputs.

  Raises:
    WorkdirError: the recorded inputs differ from the current ones; the message names what
      changed and the two ways out.
  """
  path = contract.inputs_path(workdir, decl.name)
  now = run_inputs(ctx, decl)
  try:
    saved = contract.read_json(path)
  except contract.UnreadableFile:
    saved = None  # Torn by a kill before the first checkpoint: the run starts over anyway.
  if saved is None or not _has_checkpoints(workdir, decl.name):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    contract.write_json(path, now)
    return
  changed = differences(saved, now)
  if changed:
    raise WorkdirError(
        f"run '{decl.name}' in --workdir={workdir} was started from other inputs than it has "
        f"now: {'; '.join(changed)}. Resuming would train its first steps on the old inputs and "
        "the rest on the new ones: restore the original inputs and rerun to resume, or use a "
        "new --workdir to start over with these (nothing was changed)")


def _has_checkpoints(workdir: str, run: str) -> bool:
  directory = contract.checkpoint_dir(workdir, run)
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

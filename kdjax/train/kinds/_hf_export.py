"""The ``hf`` export format: a trained decoder written as a Hugging Face model directory.

``WORKDIR/export/<run>_hf/`` holds ``config.json`` and ``model.safetensors``
(:func:`kdjax.models.save_hf`), which ``transformers.AutoModelForCausalLM.from_pretrained``
loads; with ``config.data.tokenizer`` the tokenizer's ``tokenizer.json`` is copied beside them.
The directory is read back with :func:`kdjax.models.from_hf` and its logits on the first
evaluation batch compared with the trained model's (``max_abs_diff``).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np

from kdjax import models
from kdjax.train import schema
from kdjax.train.errors import ConfigError

FORMAT = schema.HF_FORMAT


def export_hf(ctx: Any, run: str, export_dir: str) -> dict[str, Any]:
  """Writes run ``run``'s trained decoder to ``export_dir/<run>_hf``; returns its entry."""
  trained = ctx.trained(run)
  try:
    models.decoder_module(trained)
  except TypeError:
    raise ConfigError(f"run {run!r} trained a {ctx.section(ctx.decls[run].section()).model!r}; "
                      f"config.export.formats={FORMAT!r} writes decoders (a model read from a "
                      "Hugging Face directory, config.<section>.init)") from None
  directory = os.path.join(export_dir, f"{run}_{FORMAT}")
  models.save_hf(trained, directory, params=trained.params, overwrite=True)
  tokenizer = ctx.config.data.tokenizer
  if tokenizer:
    shutil.copyfile(schema.tokenizer_file(tokenizer), os.path.join(directory, "tokenizer.json"))
  reloaded = models.from_hf(directory)
  batch = next(iter(ctx.data.eval_batches()))
  tokens = np.asarray(batch[ctx.data.shapes.input_key])
  want, _ = trained.apply(trained.params, trained.model_state, tokens, train=False, rng=None)
  got, _ = reloaded.apply(reloaded.params, reloaded.model_state, tokens, train=False, rng=None)
  diff = float(np.max(np.abs(np.asarray(jax.device_get(want.logits), np.float32) -
                             np.asarray(jax.device_get(got.logits), np.float32))))
  size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
  return {"run": run, "format": FORMAT, "path": directory, "max_abs_diff": diff,
          "size_bytes": size}

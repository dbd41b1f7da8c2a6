"""Sequence-level knowledge distillation (Kim & Rush 2016).

The student is trained with ordinary next-token cross-entropy, not on the data's continuations
but on the teacher's own: greedy or beam-search outputs for the training prompts. The teacher
runs once, before training; the resulting dataset feeds :func:`~kdjax.lm.batches` and a
``DistillState`` with ``token_cross_entropy_term`` (and, for "sequence-level interpolation", any
token-level term on top).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.lm import _decode
from kdjax.models import Model


def sequence_kd_dataset(teacher: Model, prompts: np.ndarray, max_new_tokens: int, *,
                        params: Any = None, model_state: Any = None, beam_size: int = 1,
                        length_penalty: float = 1.0, eos_id: int | None = None,
                        pad_id: int = 0, batch_size: int = 64,
                        prompt_loss: bool = False) -> dict[str, np.ndarray]:
  """Next-token training data from the teacher's continuations of ``prompts``.

  Each prompt ``x`` (``P`` tokens) is continued by the teacher to ``y`` (``M =
  max_new_tokens`` tokens; greedy for ``beam_size=1``, else the best beam of
  :func:`~kdjax.lm.beam_search`), and ``s = x + y`` becomes one training row:
  ``tokens = s[:-1]``, ``targets = s[1:]``.

  Args:
    teacher: the teacher language model.
    prompts: integer ``[N, P]`` prompts (e.g. the first ``P`` tokens of training windows).
    max_new_tokens: ``M``, the continuation length.
    params, model_state: the teacher's variables; ``teacher.params`` / ``.model_state`` if
      ``None``.
    beam_size: 1 decodes greedily; more runs beam search and keeps the best beam.
    length_penalty: beam search's length normalisation exponent (matters with ``eos_id``).
    eos_id: a token ending a continuation; later positions hold ``pad_id`` and are masked.
    pad_id: the filler after ``eos_id``.
    batch_size: prompts decoded at once (the last chunk is padded, so one compilation).
    prompt_loss: also train on predicting the prompt's own tokens (by default only the
      continuation, the teacher's knowledge, is a target).

  Returns:
    ``{'tokens': int32 [N, P + M - 1], 'targets': int32 [N, P + M - 1], 'mask': bool
    [N, P + M - 1]}``: ``mask`` keeps the targets the teacher produced (up to and including
    its ``eos_id``) and, with ``prompt_loss``, the prompt's.
  """
  prompts = np.asarray(prompts)
  if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer) or prompts.shape[0] < 1:
    raise ValueError(f"prompts must be integer [num_prompts >= 1, prompt_length], got "
                     f"{prompts.dtype}{list(prompts.shape)}")
  params = teacher.params if params is None else params
  model_state = teacher.model_state if model_state is None else model_state
  n, p = prompts.shape
  batch_size = max(1, min(int(batch_size), n))
  decode = _decode_fn(teacher, int(max_new_tokens), int(beam_size), eos_id, pad_id,
                      float(length_penalty))
  chunks = []
  for start in range(0, n, batch_size):
    chunk = prompts[start:start + batch_size]
    real = chunk.shape[0]
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
    chunks.append(np.asarray(decode(params, model_state, jnp.asarray(chunk)))[:real])
  sequences = np.concatenate(chunks).astype(np.int32)

  generated = np.zeros(sequences.shape, bool)
  generated[:, p:] = True
  if eos_id is not None:
    is_eos = sequences[:, p:] == eos_id
    after_eos = (np.cumsum(is_eos, axis=1) - is_eos) > 0
    generated[:, p:] &= ~after_eos
  mask = generated[:, 1:].copy()
  if prompt_loss:
    mask[:, :p - 1] = True
  return {"tokens": sequences[:, :-1], "targets": sequences[:, 1:], "mask": mask}


def _decode_fn(teacher, max_new_tokens, beam_size, eos_id, pad_id, length_penalty):
  if beam_size == 1:
    fn = functools.partial(_decode.greedy_decode, teacher, max_new_tokens=max_new_tokens,
                           eos_id=eos_id, pad_id=pad_id)
  else:
    def fn(params, model_state, prompts):
      sequences, _ = _decode.beam_search(teacher, params, model_state, prompts, max_new_tokens,
                                         beam_size, eos_id=eos_id, pad_id=pad_id,
                                         length_penalty=length_penalty)
      return sequences[:, 0]
  return jax.jit(fn)

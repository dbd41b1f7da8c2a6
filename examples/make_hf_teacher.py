"""Make the small Hugging Face-format teacher (and student initialisation) that
``configs/lm/hf_distill.py`` distils from, offline, with kdjax alone.

It trains a byte-level BPE tokenizer (the ``tokenizers`` library, 512 tokens) on the bundled
text (``text:stdlib``, the Python standard library's source), trains a Llama-style decoder on
that text with kdjax (next-token cross-entropy, AdamW), and writes, with
``kdjax.models.save_hf``:

* ``OUT/teacher``: the trained teacher (2 layers, hidden 128, 4 heads, 2 key-value heads),
  ``config.json`` + ``model.safetensors`` + ``tokenizer.json``;
* ``OUT/student``: a randomly initialised student (1 layer, hidden 64) with the same tokenizer,
  for ``config.student.init``.

``transformers.AutoModelForCausalLM.from_pretrained(OUT + '/teacher')`` loads the teacher.

  python examples/make_hf_teacher.py --out /tmp/kdjax_hf
  python -m kdjax.main --config=configs/lm/hf_distill.py:/tmp/kdjax_hf --workdir=/tmp/hf_distill
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import jax
import numpy as np
import optax

import kdjax
from kdjax import lm
from kdjax import models
from kdjax.train import config as config_lib
from kdjax.train import rundata

VOCAB = 512
LENGTH = 64
TEACHER = dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
               num_kv_heads=2, head_dim=32)
STUDENT = dict(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
               num_kv_heads=2, head_dim=16)


def train_tokenizer(path: str, vocab_size: int = VOCAB) -> None:
  """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on the bundled text."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  tokenizer = Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  text = rundata.stdlib_text().decode("utf-8")
  tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
  tokenizer.save(path)


def decoder_config(vocab: int, sizes: dict) -> models.zoo.DecoderConfig:
  return models.zoo.DecoderConfig(vocab_size=vocab, rope_theta=10000.0, rms_norm_eps=1e-5,
                                  tie_embeddings=False, family="llama", **sizes)


def train_teacher(model: models.Model, data: rundata.TextData, *, steps: int, seed: int,
                  batch_size: int = 32) -> models.Model:
  """``steps`` AdamW updates of next-token cross-entropy on the training windows."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, steps // 10), steps)
  tx = optax.adamw(schedule, b2=0.98, weight_decay=0.01)
  objective = kdjax.objectives.combine({"ce": lm.token_cross_entropy_term()})
  batches = data.train_iterator(seed=seed, batch_size=batch_size)
  first = next(batches)
  state = kdjax.DistillState.create(student=model, teacher=None, objective=objective, tx=tx,
                                    rng=jax.random.key(seed), example_batch=first,
                                    input_key="tokens", label_key="targets")
  step = jax.jit(kdjax.distill_step, donate_argnums=0)
  batch = first
  for i in range(steps):
    state, metrics = step(state, batch)
    if i % 100 == 0 or i == steps - 1:
      print(f"teacher step {i:4d}  loss {float(metrics['loss']):.4f}", flush=True)
    batch = next(batches)
  return state.student()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="/tmp/kdjax_hf", help="writes OUT/teacher, OUT/student")
  parser.add_argument("--steps", type=int, default=400, help="teacher training steps (0: "
                      "random teacher)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--overwrite", action="store_true", help="replace existing directories")
  args = parser.parse_args()
  start = time.time()
  teacher_dir, student_dir = (os.path.join(args.out, d) for d in ("teacher", "student"))
  for d in (teacher_dir, student_dir):
    if os.path.exists(d) and not args.overwrite:
      raise SystemExit(f"{d} exists; pass --overwrite or choose another --out")
    os.makedirs(d, exist_ok=True)
  tokenizer = os.path.join(teacher_dir, "tokenizer.json")
  train_tokenizer(tokenizer)
  shutil.copyfile(tokenizer, os.path.join(student_dir, "tokenizer.json"))
  config = config_lib.resolve({"data": {"name": "text:stdlib", "sequence_length": LENGTH,
                                        "tokenizer": teacher_dir}})
  data = rundata.TextData(config)
  print(f"text: {len(data.train['tokens'])} train / {len(data.valid['tokens'])} validation "
        f"windows of {LENGTH} tokens, vocabulary {data.vocab_size}", flush=True)
  keys = jax.random.split(jax.random.key(args.seed))
  teacher = models.decoder_model(decoder_config(data.vocab_size, TEACHER), rng=keys[0])
  if args.steps:
    teacher = train_teacher(teacher, data, steps=args.steps, seed=args.seed)
  student = models.decoder_model(decoder_config(data.vocab_size, STUDENT), rng=keys[1])
  models.save_hf(teacher, teacher_dir, params=teacher.params, overwrite=args.overwrite)
  models.save_hf(student, student_dir, params=student.params, overwrite=args.overwrite)
  for name, d in (("teacher", teacher_dir), ("student", student_dir)):
    model = models.from_hf(d)
    ppl = lm.perplexity(model, data.valid, params=model.params, model_state=model.model_state)
    print(f"{name:8s} {d}  {models.param_count(model.params)} parameters, validation "
          f"perplexity {ppl:.3f}", flush=True)
  print(f"done in {time.time() - start:.1f} s", flush=True)


if __name__ == "__main__":
  main()

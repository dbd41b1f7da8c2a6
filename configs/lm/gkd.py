"""On-policy distillation (GKD) of a byte-level decoder on the bundled text, beside its baselines.

  python -m kdjax.main --config=configs/lm/gkd.py --workdir=/tmp/kdjax_gkd

The text is ``text:stdlib`` (the Python standard library's own source, bytes as tokens, the last
10% for validation), cut into 32-token rows. Models are the zoo's decoder (``'decoder'``,
Llama-style: RoPE, RMSNorm, SwiGLU, grouped-query attention). Runs:

* ``teacher``: 2 layers, hidden 128, next-token cross-entropy, 800 steps;
* ``student``: 1 layer, hidden 48, cross-entropy alone, 300 steps;
* ``student_kd``: the same student, 0.5 cross-entropy + 0.5 token KD (T = 1) on the data;
* ``student_gkd``: the same student, GKD (kind ``on_policy``): each step, with probability
  ``lmbda`` = 0.5, the rows' continuations are sampled from the current student (temperature
  1) and otherwise taken from the data; the teacher scores them in the step and the loss is the
  generalized JSD over the continuation tokens, here at ``beta`` = 0 (forward
  KL(teacher || student), the divergence perplexity measures). The prompt is each row's first
  token: validation perplexity counts every position, and positions inside a longer prompt
  would never be trained.

Each reports validation ``perplexity``; ``student_gkd/metrics.jsonl`` logs
``on_policy_fraction`` and ``generation_length``.
"""
from kdjax.configs import common

SEQUENCE_LENGTH = 32


def get_config():
  config = common.text_decoders(SEQUENCE_LENGTH)
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "student", "kind": "supervised", "model": "student", "compare": "teacher"},
      {"name": "student_kd", "kind": "distill", "model": "student", "teachers": ("teacher",)},
      {"name": "student_gkd", "kind": "on_policy", "model": "student", "teachers": ("teacher",),
       "lmbda": 0.5, "beta": 0.0, "temperature": 1.0, "prompt_length": 1},
  )
  return config

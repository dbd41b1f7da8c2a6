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
ROPE_AND_NORM = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5}


def _decoder(hidden: int, layers: int) -> dict:
  return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_layers": layers,
          "num_heads": 4, "num_kv_heads": 2, "head_dim": hidden // 4, **ROPE_AND_NORM}


def get_config():
  config = common.text_lm(sequence_length=SEQUENCE_LENGTH, eval_batch_size=256, total_steps=300,
                          log_every=10, eval_every=300, checkpoint_every=150)
  config.checked_steps = 0
  config.teacher.model = "decoder"
  config.teacher.model_kwargs = _decoder(128, 2)
  config.teacher.total_steps = 800
  config.student.model = "decoder"
  config.student.model_kwargs = _decoder(48, 1)
  for opt in (config.optimizer, config.teacher.optimizer):
    common.adamw_warmup(opt, warmup_steps=20)
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "student", "kind": "supervised", "model": "student", "compare": "teacher"},
      {"name": "student_kd", "kind": "distill", "model": "student", "teachers": ("teacher",)},
      {"name": "student_gkd", "kind": "on_policy", "model": "student", "teachers": ("teacher",),
       "lmbda": 0.5, "beta": 0.0, "temperature": 1.0, "prompt_length": 1},
  )
  return config

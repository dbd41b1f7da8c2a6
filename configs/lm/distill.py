"""Token-level LM distillation on the bundled text, beside the student alone.

The text is about 320 KB of the Python standard library's own source (``text:stdlib``; bytes
are the tokens, the last 10% is the validation split), so it runs offline:

  python -m kdjax.main --config=configs/lm/distill.py --workdir=/tmp/kdjax_lm

Runs: ``teacher`` (a 3-layer Transformer LM, d_model 128), ``student`` (1 layer, d_model 64,
next-token cross-entropy alone) and ``student_kd`` (0.5 CE + 0.5 token KD at T = 1, the teacher
run inside the step). Each reports validation ``perplexity`` and token ``accuracy``.
"""
from kdjax.configs import common


def get_config():
  config = common.text_lm(sequence_length=64, total_steps=300)
  lm = {"n_heads": 4, "max_len": 64, "dropout_rate": 0.0}
  config.teacher.model = "transformer_lm"
  config.teacher.model_kwargs = {"d_model": 128, "n_layers": 3, **lm}
  config.teacher.total_steps = 600
  config.student.model = "transformer_lm"
  config.student.model_kwargs = {"d_model": 64, "n_layers": 1, **lm}
  common.adamw_warmup(config.optimizer, warmup_steps=30)
  config.teacher.optimizer.warmup_steps = 60
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
  return config

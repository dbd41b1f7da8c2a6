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
  return common.text_lm_kd()

"""Distil a Hugging Face-format teacher into a Hugging Face-format student, offline.

The argument is a directory holding ``teacher/`` and ``student/`` (Hugging Face model
directories: ``config.json``, ``model.safetensors``, ``tokenizer.json``), which
``examples/make_hf_teacher.py`` makes from the bundled text:

  python examples/make_hf_teacher.py --out /tmp/kdjax_hf
  python -m kdjax.main --config=configs/lm/hf_distill.py:/tmp/kdjax_hf --workdir=/tmp/hf_distill

A teacher of your own: ``--config.teacher.checkpoint=DIR`` (the tokenizer follows it) and
``--config.student.init=DIR`` (a student of the same vocabulary). Runs:

* ``teacher`` (kind ``load``): the teacher read by ``kdjax.models.from_hf``, only evaluated;
* ``student``: the student directory's model trained with next-token cross-entropy alone;
* ``student_kd``: the same student, 0.5 cross-entropy + 0.5 token KD (T = 1), the KD computed
  from both models' final hidden states and heads 256 tokens at a time (``chunk_size``);
* ``export``: ``student_kd`` written back as a Hugging Face directory,
  ``WORKDIR/export/student_kd_hf/`` (``transformers.AutoModelForCausalLM`` loads it), with the
  tokenizer beside it.

Each run reports validation ``perplexity`` on the text's last 10%, tokenized by the teacher's
``tokenizer.json``.
"""
import os

from kdjax.configs import common


def get_config(models_dir: str = "/tmp/kdjax_hf"):
  config = common.text_lm(sequence_length=64, total_steps=300)
  config.teacher.checkpoint = os.path.join(models_dir, "teacher")
  config.student.init = os.path.join(models_dir, "student")
  config.data.tokenizer = config.teacher.get_ref("checkpoint")  # follows the teacher
  common.adamw_warmup(config.optimizer, warmup_steps=30)
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets",
                                      chunk_size=256)
  config.export.formats = ("hf",)
  return config

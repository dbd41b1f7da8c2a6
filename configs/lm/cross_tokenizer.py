"""Distillation across tokenizers: a byte-level teacher, a student with its own BPE vocabulary.

  python -m kdjax.main --config=configs/lm/cross_tokenizer.py --workdir=/tmp/kdjax_xtok

The text is ``text:stdlib`` (the Python standard library's own source; the last 10% for
validation). Models are the zoo's decoder (``'decoder'``). Runs:

* ``teacher``: 2 layers, hidden 128, on the text's bytes (64-byte rows), next-token
  cross-entropy;
* ``student``: 1 layer, hidden 48, on the tokens of a byte-level BPE of ``VOCAB_SIZE`` entries
  learnt from the training split when the run is planned (``kdjax.lm.BpeTokenizer``: offline,
  deterministic, under a second), cross-entropy alone (kind ``cross_tokenizer`` without
  teachers);
* ``student_xtok``: the same student on the same windows, distilled from the teacher across
  tokenizers (kind ``cross_tokenizer``): each window keeps both tokenizations of its text with
  their byte offsets, the teacher reads its bytes inside the step, and the loss is
  ``CE_WEIGHT`` (0.75) cross-entropy plus ``NEXT_BYTE_KL_WEIGHT`` (0.25) times the KL from the
  teacher's next byte to the first byte of the student's next token where a student token
  starts (``kdjax.losses.next_byte_kl``). ``SPAN_KL_WEIGHT`` (the KL of each aligned span's
  likelihood, the teacher's a product over its bytes) and ``ULD_WEIGHT`` (ULD's distance
  between sorted distributions) are 0: both did worse here (docs/lm.md, "Across tokenizers").

Validation reports ``bits_per_byte`` (the summed NLL of the evaluation text over its bytes), the
number that compares the byte-level teacher with the BPE students. ``--config.seed``,
``--config.total_steps`` (students), ``--config.teacher.total_steps`` and
``--config.data.sequence_length`` (the teacher's bytes per row) override the key numbers; the
runs' own settings are the constants below (``get_config`` reads them, so a script can change
them after import).
"""
from kdjax.configs import common

SEQUENCE_LENGTH = 64  # The teacher's bytes per row; the students' BPE rows hold about as much.
VOCAB_SIZE = 512
CE_WEIGHT = 0.75
NEXT_BYTE_KL_WEIGHT = 0.25
SPAN_KL_WEIGHT = 0.0
ULD_WEIGHT = 0.0
TEMPERATURE = 1.0


def get_config():
  config = common.text_decoders(SEQUENCE_LENGTH)
  config.seed = 0
  bpe = {"kind": "cross_tokenizer", "model": "student", "vocab_size": VOCAB_SIZE}
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "student", **bpe},
      {"name": "student_xtok", **bpe, "teachers": ("teacher",), "ce_weight": CE_WEIGHT,
       "next_byte_kl_weight": NEXT_BYTE_KL_WEIGHT, "span_kl_weight": SPAN_KL_WEIGHT,
       "uld_weight": ULD_WEIGHT, "temperature": TEMPERATURE},
  )
  return config

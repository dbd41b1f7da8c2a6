"""The ``cross_tokenizer`` run kind and configs/lm/cross_tokenizer.py: a BPE student beside a
byte-level teacher on the same text, its windows, its refusals and a short run of the config."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from kdjax import lm
from kdjax.train import ConfigError, kinds, pipeline
from kdjax.train.kinds import cross_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "configs", "lm", "cross_tokenizer.py")

pytest.importorskip("tokenizers")


def _config(**run_fields):
  """The config file's config; ``run_fields`` update its ``student_xtok`` declaration."""
  spec = importlib.util.spec_from_file_location("cross_tokenizer_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  runs = [dict(r) for r in config.runs]
  runs[2].update(run_fields)
  config.runs = tuple(runs)
  return config


@pytest.fixture(scope="module")
def resolved():
  return pipeline.resolve(_config())


def _context(config, run_data):
  decls = kinds.declarations(config)
  return kinds.Context(config=config, data=run_data, workdir="/nonexistent",
                       decls={d.name: d for d in decls}, abstract=True)


def test_the_bpe_windows_spell_the_text_the_teacher_reads(resolved):
  config, text_data = resolved
  data = text_data.retokenized(vocab_size=300, length=0, teacher_length=32, with_teacher=True)
  assert text_data.retokenized(vocab_size=300, length=0, teacher_length=32,
                               with_teacher=True) is data  # Built once per setting.
  train, valid = text_data.split_text("train"), text_data.split_text("valid")
  assert train + valid == text_data.text and len(train) == int(0.9 * len(text_data.text))
  tok = data.tokenizer
  assert tok.vocab_size == 300 and data.shapes.num_classes == 300
  # Trained on the training split alone, deterministically.
  again = lm.BpeTokenizer.train([train], 300)
  assert again.fingerprint() == tok.fingerprint()
  # Derived length: 90% of the BPE tokens that 32 bytes hold on average.
  assert data.length == int(0.9 * 32 / data.bytes_per_token)
  assert data.teacher_length == 32
  w = data.train
  assert w["tokens"].shape[1] == data.length and w["teacher_tokens"].shape[1] == 32
  # Each row's student tokens and teacher tokens spell the same text from the same byte.
  byte_values = np.unique(np.frombuffer(text_data.text, np.uint8))  # The teacher's ids.
  for row in range(0, len(w["tokens"]), 97):
    student = b"".join(tok.token_bytes(int(i)) for i in w["tokens"][row])
    teacher = bytes(byte_values[w["teacher_tokens"][row]].tolist())
    n = min(len(student), len(teacher))
    assert student[:n] == teacher[:n] and n > 0
    target_pieces = [tok.token_bytes(int(i)) for i in w["targets"][row]]
    np.testing.assert_array_equal(w[lm.TARGET_BYTES_KEY][row], [len(p) for p in target_pieces])
  # Validation: the BPE tokens of exactly the teacher's evaluation text.
  v = data.valid
  spelled = b"".join(tok.token_bytes(int(i)) for i in v["tokens"].ravel())
  assert valid.startswith(spelled) and len(valid) - len(spelled) < 4 * data.length
  assert lm.TEACHER_TOKENS_KEY not in v
  assert set(data.example_batch(8)) == set(w)
  # The byte teacher's id of each BPE entry's first byte.
  for v in (0, 100, 299):
    assert byte_values[data.first_byte[v]] == tok.token_bytes(v)[0]
  plain = text_data.retokenized(vocab_size=300, length=0, teacher_length=32, with_teacher=False)
  assert set(plain.train) == {"tokens", "targets", "mask", lm.TARGET_BYTES_KEY}
  np.testing.assert_array_equal(plain.train["tokens"], w["tokens"])


@pytest.mark.parametrize("fields, key", [
    ({"vocab_size": 100}, "config.runs[2].vocab_size=100"),
    ({"temperature": 0.0}, "config.runs[2].temperature=0.0"),
    ({"uld_weight": -1.0}, "config.runs[2].uld_weight=-1.0"),
    ({"next_byte_kl_weight": 0.0}, "config.runs[2]: a teacher is named"),
    ({"teachers": ("student",)}, "config.runs[2].teachers=('student',)"),
    ({"teachers": (), "span_kl_weight": 0.5}, "config.runs[2]: span_kl_weight / uld_weight"),
    ({"length": 64}, "config.runs[2]: length and teacher_length are both 64"),
    ({"length": 10**6}, "config.runs[2] (vocab_size, length, teacher_length)"),
])
def test_bad_fields_are_refused_in_one_line_naming_the_key(resolved, fields, key):
  config, text_data = resolved
  config = _config(**fields)
  ctx = _context(config, text_data)
  with pytest.raises(ConfigError) as e:
    cross_tokenizer.plan(ctx, ctx.decls["student_xtok"])
  assert key in str(e.value) and "\n" not in str(e.value)


def test_a_bad_field_stops_the_pipeline_before_anything_is_written(tmp_path):
  config = _config(vocab_size=10)
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError, match=r"config\.runs\[2\]\.vocab_size=10"):
    pipeline.train_and_evaluate(config, str(workdir))
  assert not workdir.exists() or not any(workdir.iterdir())


@pytest.mark.slow
def test_the_config_runs_and_reports_bits_per_byte(tmp_path):
  from tests.train.conftest import run_cli  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "xtok")
  run_cli(f"--config={CONFIG_FILE}", f"--workdir={workdir}", "--config.total_steps=30",
          "--config.teacher.total_steps=30", "--config.eval_every=30",
          "--config.checkpoint_every=30", "--config.log_every=10")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results) == {"teacher", "student", "student_xtok"}
  for entry in results.values():
    assert entry["bits_per_byte"] > 0
  teacher, student, xtok = results["teacher"], results["student"], results["student_xtok"]
  # Byte-level teacher: bits per byte is log2 of its perplexity.
  assert teacher["bits_per_byte"] == pytest.approx(math.log2(teacher["perplexity"]), rel=1e-6)
  assert xtok["baseline"] == "student" and xtok["tokenizer"] == student["tokenizer"]
  # The students' bytes, counted here from the BPE tokens of the evaluation text.
  config, text_data = pipeline.resolve(_config())
  settings = student["tokenizer"]
  tok = lm.BpeTokenizer.train([text_data.split_text("train")], settings["vocab_size"])
  ids = tok.encode(text_data.split_text("valid")).ids
  windows = lm.sequence_windows(ids, settings["length"])
  nbytes = sum(len(tok.token_bytes(int(i))) for i in windows["targets"].ravel())
  assert student["count"] == windows["targets"].size
  for entry in (student, xtok):
    assert entry["bits_per_byte"] == pytest.approx(
        entry["nll"] * entry["count"] / (math.log(2) * nbytes), rel=1e-5)
  train_log = [json.loads(line) for line in
               open(os.path.join(workdir, "student_xtok", "metrics.jsonl"))]
  assert any("next_byte_kl" in r for r in train_log)

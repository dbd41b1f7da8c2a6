"""examples/lm_table.py: every row is a valid config of the run layer (schema, declarations,
run kinds) over the one loaded teacher, and the table reads bits per byte and the baseline right.
Nothing trains: each row's run takes minutes."""
import importlib.util
import math
import os
import sys

import numpy as np
import pytest

from kdjax.train import config as config_lib
from kdjax.train import kinds
from kdjax.train.kinds import on_policy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
TEACHER = "/tables/teacher/teacher"


@pytest.fixture(scope="module", name="table")
def fixture_table():
  sys.path.insert(0, EXAMPLES)  # The script imports its sibling _runs.
  try:
    spec = importlib.util.spec_from_file_location("lm_table", os.path.join(EXAMPLES, "lm_table.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Its dataclass looks its module up by name.
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(EXAMPLES)
  return module


def _declared(config):
  config = config_lib.resolve(config)  # The schema: every key and value checked.
  return config, {d.name: d for d in kinds.declarations(config)}


def test_every_gkd_row_is_a_checked_config_over_the_loaded_teacher(table):
  objectives = {}
  for name, row in table.ROWS.items():
    if row.how == "xtok":
      continue
    config, decls = _declared(table.row_config(row, 1, TEACHER, steps=300, teacher_steps=800))
    assert config.seed == 1 and config.total_steps == 300
    assert config.student.model == config.teacher.model == "decoder"
    assert config.student.model_kwargs["hidden_size"] == 48
    assert config.teacher.model_kwargs["hidden_size"] == 128
    if name == "student":  # The baseline reads no teacher.
      assert list(decls) == ["student"] and decls["student"].kind == "supervised"
      continue
    assert config.teacher.checkpoint == TEACHER
    assert decls["teacher"].kind == "load"
    if row.how == "topk":  # Trained on kdjax.train.fit with the baseline's section.
      assert list(decls) == ["teacher", "student"]
    else:
      assert list(decls) == ["teacher", name] and decls[name].read_runs() == ("teacher",)
    if decls.get(name) is not None and decls[name].kind == "on_policy":
      settings = on_policy.settings(decls[name], config.data.sequence_length)
      assert settings.max_new_tokens == config.data.sequence_length  # Every position trained.
    objectives[name] = config.objective.to_dict()
  assert objectives["forward_kd"]["kd"]["kind"] == "kd"
  assert objectives["reverse_kd"]["kd"]["kind"] == "reverse_kd"
  assert objectives["jsd"]["kd"]["kind"] == "jensen_shannon"
  assert objectives["skew_kl"]["kd"] == {"kind": "skew_kl", "weight": 0.5, "temperature": 1.0,
                                         "alpha": 0.1}
  kinds_of = {n: table.ROWS[n].decl for n in ("seq_kd", "gkd_05", "gkd_1")}
  assert (kinds_of["seq_kd"]["lmbda"], kinds_of["seq_kd"]["seq_kd_prob"]) == (0.0, 1.0)
  assert kinds_of["gkd_05"]["lmbda"] == 0.5 and kinds_of["gkd_1"]["lmbda"] == 1.0


def test_the_sampled_row_reads_sampled_targets_from_the_cache(table):
  config, decls = _declared(table.row_config(table.ROWS["sampled_cache"], 2, TEACHER,
                                             steps=300, teacher_steps=800))
  cache = config.teacher_cache
  assert cache.enabled and cache.targets == "sampled" and cache.k == table.TOPK
  assert decls["sampled_cache"].kind == "distill"


def test_the_cross_tokenizer_row_loads_the_table_teacher(table):
  if not os.path.exists(os.path.join(REPO, "configs", "lm", "cross_tokenizer.py")):
    pytest.skip("configs/lm/cross_tokenizer.py is not there")
  config, decls = _declared(table.xtok_config(2, TEACHER, steps=300))
  assert config.seed == 2 and config.total_steps == 300 and config.data.sequence_length == 32
  assert decls["teacher"].kind == "load" and config.teacher.checkpoint == TEACHER
  assert "student_xtok" in decls and decls["student_xtok"].read_runs() == ("teacher",)


def test_bits_per_byte_and_the_verdict_against_the_student_alone(table):
  assert table.bits_per_byte({"perplexity": 8.0}) == pytest.approx(3.0)
  assert table.bits_per_byte({"perplexity": 8.0, "bits_per_byte": 2.5}) == 2.5

  def rec(row, seed, bpb):
    return {"row": row, "seed": seed, "bits_per_byte": bpb, "wall_s": 10.0, "cpu_s": 5.0}

  records = {"student": [rec("student", s, b) for s, b in enumerate((3.0, 3.1, 3.2))],
             "jsd": [rec("jsd", s, b) for s, b in enumerate((2.9, 3.0, 3.1))],
             "gkd_1": [rec("gkd_1", s, b) for s, b in enumerate((3.3, 3.2, 3.4))]}
  lines = {line.split(" | ")[0].lstrip("| "): line
           for line in table.table(records, (0, 1, 2)).splitlines()}
  std = np.std([2.9, 3.0, 3.1], ddof=1)
  assert f"3.0000 ± {std:.4f} | 3 | better (-0.1000) |" in lines["JSD"]
  assert "| NOT better (+0.2000) |" in lines["GKD lambda 1"]
  assert "not run" in lines["skew KL (alpha 0.1)"]
  # A row with fewer seeds is compared with the student alone on the same seeds.
  records["jsd"] = records["jsd"][2:]
  assert "| 3.1000 | 1 | better (-0.1000) |" in table.table(records, (0, 1, 2))
  assert math.isclose(table.bits_per_byte({"perplexity": math.e}), 1 / math.log(2))

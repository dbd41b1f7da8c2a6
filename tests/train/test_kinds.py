"""kdjax.train.kinds: declarations become each kind's fields, checked before any work."""
import dataclasses

import pytest

from kdjax.train import kinds
from kdjax.train.errors import ConfigError
from kdjax.train.kinds import compressed, export, load, lwf, supervised
from tests.train.conftest import tiny


def test_the_table_holds_one_module_per_kind():
  assert sorted(kinds.KINDS) == ["compressed", "cross_tokenizer", "distill", "export", "load",
                                 "lwf", "mutual", "on_policy", "several_students",
                                 "supervised"]
  for name, kind in kinds.KINDS.items():
    assert issubclass(kind.fields, kinds.Run) and callable(kind.plan), name
    assert dataclasses.is_dataclass(kind.fields) and kind.fields.__dataclass_params__.frozen


def test_standard_pipeline_declarations():
  decls = kinds.declarations(tiny())
  assert [(d.name, d.kind) for d in decls] == [
      ("teacher", "supervised"), ("student", "supervised"), ("student_kd", "distill")]
  teacher, student, student_kd = decls
  assert teacher.section() == "teacher" and teacher.reuse_key() == "teacher.checkpoint"
  assert student.read_runs() == ("teacher",) and student_kd.read_runs() == ("teacher",)
  assert student_kd.teachers == ("teacher",) and student_kd.section() == "student"


def test_compress_and_export_add_their_runs():
  config = tiny(**{"compress.pruning": 0.5, "compress.quantization": "ptq",
                   "export.formats": ("onnx",)})
  decls = {d.name: d for d in kinds.declarations(config)}
  assert list(decls) == ["teacher", "student", "student_kd", "student_kd_pruned",
                         "student_kd_int8", "export"]
  assert isinstance(decls["student_kd_int8"], compressed.Compressed)
  assert decls["student_kd_int8"].quantize == "ptq"
  # The post-training quantization has no checkpoint: it is not exported.
  assert isinstance(decls["export"], export.Export)
  assert decls["export"].runs == ("student_kd", "student_kd_pruned")
  assert decls["export"].formats == ("onnx",)


def test_loaded_teacher_and_lwf_class_counts():
  config = tiny(**{"teacher.checkpoint": "/somewhere"})
  teacher = kinds.declarations(config)[0]
  assert isinstance(teacher, load.Load) and teacher.external and teacher.section() == "teacher"
  old = kinds.declare({"name": "old", "kind": "supervised", "classes": [0, 1, 2]})
  new = kinds.declare({"name": "new", "kind": "lwf", "old": "old", "classes": (5, 6)})
  assert isinstance(old, supervised.Supervised) and old.classes == (0, 1, 2)
  assert isinstance(new, lwf.Lwf) and new.read_runs() == ("old",)
  assert new.num_classes({"old": old, "new": new}) == 7 and old.num_classes({}) == 3


@pytest.mark.parametrize("runs, message", [
    (({"name": "a", "kind": "teach"},), r"config.runs\[0\].kind='teach' is not a run kind"),
    (({"name": "a", "kind": "supervised", "teachers": ("b",)},),
     r"config.runs\[0\] \(kind 'supervised'\) has no field\(s\) \['teachers'\]"),
    (({"name": "a b", "kind": "supervised"},), "must be a name of letters"),
    (({"name": "a", "kind": "supervised"}, {"name": "a", "kind": "supervised"}),
     "is used twice"),
    (({"name": "s", "kind": "distill", "teachers": ("t",)},),
     r"reads run 't', which no earlier run declares"),
    (({"name": "e", "kind": "export", "runs": ("s",)},), r"reads run 's'"),
])
def test_bad_declarations(runs, message):
  config = tiny()
  config.runs = runs
  with pytest.raises(ConfigError, match=message):
    kinds.declarations(config)

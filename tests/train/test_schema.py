"""The config schema: one declaration per key, its table in the docs, every bad value in resolve."""
import dataclasses
import glob
import importlib.util
import json
import os

import pytest

from kdjax.train import config as config_lib
from kdjax.train import schema
from kdjax.train.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))


def _doc_table():
  with open(os.path.join(REPO, "docs", "training.md"), encoding="utf-8") as f:
    text = f.read()
  begin, end = text.index(schema.TABLE_BEGIN), text.index(schema.TABLE_END)
  return text[begin:end + len(schema.TABLE_END)]


def test_the_key_table_lists_every_key_of_base_config_once():
  keys = [row.key for row in schema.key_table()]
  assert len(keys) == len(set(keys))
  flat = config_lib.flatten(config_lib.plain(config_lib.base_config()))
  assert set(keys) == set(flat)
  assert {"compress.prune_end", "compress.keep_dense", "export.formats", "export.batch_size",
          "teacher.optimizer.learning_rate", "checked_steps"} <= set(keys)
  assert all(row.doc for row in schema.key_table())


def test_the_docs_table_is_the_generated_one():
  # Regenerate with: python -c "from kdjax.train import schema; print(schema.key_table_markdown())"
  assert _doc_table() == schema.key_table_markdown()
  for key in config_lib.flatten(config_lib.plain(config_lib.base_config())):
    assert f"| `{key}` |" in _doc_table()


def test_the_table_shows_the_defaults_base_config_holds():
  flat = config_lib.flatten(config_lib.plain(config_lib.base_config()))
  for row in schema.key_table():
    if not row.key.startswith("teacher.") and row.key not in ("models", "objective"):
      assert row.default == f"`{flat[row.key]!r}`", row.key
  # The typed defaults and the ml_collections ones are the same values.
  resolved = config_lib.plain(config_lib.resolve({}))
  assert schema.Config.parse(resolved) == schema.Config()


def test_runtime_keys_come_from_the_schema():
  assert set(config_lib.RUNTIME_KEYS) == {
      "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "progress_bar",
      "parallel", "mesh", "shard_teacher", "shard_student", "teacher.remat", "student.remat",
      "data.data_dir",
      "data.worker_count", "data.eval_batch_size", "logging", "checked_steps", "export",
      "teacher_cache.batch_size", "teacher_cache.chunk_size", "teacher_cache.dir",
      "teacher_cache.on_stale"}
  runtime_rows = {row.key for row in schema.key_table() if row.runtime}
  assert "mesh.data" in runtime_rows and "export.formats" in runtime_rows
  assert "seed" not in runtime_rows and "compress.pruning" not in runtime_rows


@pytest.mark.parametrize("config, message", [
    ({"optimizer": {"name": "foo"}},
     "config.optimizer.name='foo' is not an optimizer; use one of ('sgd', 'momentum'"),
    ({"teacher": {"optimizer": {"schedule": "linear"}}},
     "config.teacher.optimizer.schedule='linear' is not a schedule"),
    ({"student": {"model": "resnet9"}}, "config.student.model='resnet9' is not a kdjax model"),
    ({"teacher": {"dtype": "int8"}}, "config.teacher.dtype='int8' is not supported"),
    ({"student": {"remat": True}},
     "config.student.remat=True: model 'mlp' has no rematerialised blocks"),
    ({"teacher": {"model": "transformer_lm", "remat": "yes"}},
     "config.teacher.remat='yes' is a str, but config.teacher.remat takes a bool"),
    ({"models": {"peer": {"model": "mlp", "dtype": "int8"}}},
     "config.models.peer.dtype='int8' is not supported"),
    ({"models": {"peer": {"modle": "mlp"}}}, "config.models.peer must be a mapping with a 'model'"),
    ({"objective": {"kd": {"kind": "hinton"}}},
     "config.objective.kd.kind='hinton' is not a kdjax objective term"),
    ({"objective": {"kd": {"kind": "kd", "tau": 2.0}}},
     "config.objective.kd: term kind 'kd' takes no argument(s) ['tau']"),
    ({"data": {"eval_batch_size": 0}}, "config.data.eval_batch_size must be an integer >= 1"),
    ({"data": {"augment": {"crop_padding": -4}}},
     "config.data.augment.crop_padding must be an integer >= 0"),
    ({"compress": {"steps": -1}}, "config.compress.steps must be an integer >= 0"),
    ({"compress": {"pruning": 1.0}}, "config.compress.pruning=1.0 is a target sparsity in [0, 1)"),
    ({"compress": {"prune_structure": "4:8"}},
     "config.compress.prune_structure='4:8'; use one of ('unstructured', '2:4')"),
    ({"compress": {"pruning": 0.5, "prune_end": 2000}},
     "config.compress.prune_end=2000 is beyond the pruning run's last step 1000 "
     "(config.total_steps)"),
    ({"compress": {"pruning": 0.5, "steps": 100, "prune_end": 200}},
     "last step 100 (config.compress.steps)"),
    ({"compress": {"pruning": 0.5, "prune_begin": 900}},
     "config.compress.prune_begin=900 must come before the step the target is reached (750)"),
    ({"compress": {"prune_frequency": 0}}, "config.compress.prune_frequency must be an integer >= 1"),
    ({"compress": {"weight_bits": 3}}, "config.compress.weight_bits=3; use one of (8, 4)"),
    ({"compress": {"act_bits": 16}}, "config.compress.act_bits=16; use one of (8, 4, 0)"),
    ({"compress": {"keep_dense": ("head/[",)}},
     "config.compress.keep_dense holds 'head/[', which is not a regular expression"),
    ({"compress": {"quantization": "int8"}},
     "config.compress.quantization='int8'; use one of ('none', 'ptq', 'qat')"),
    ({"export": {"formats": ("tflite",)}},
     "config.export.formats=('tflite',) names ['tflite']; use a tuple of ('stablehlo', 'onnx', "
     "'hf')"),
    ({"teacher_cache": {"mode": "topk"}}, "config.teacher_cache.mode='topk'; use one of"),
    ({"teacher_cache": {"enabled": True}, "data": {"augment": {"mixup_alpha": 0.2}}},
     "config.teacher_cache.enabled=True with mixup / CutMix"),
    ({"runs": ("teacher",)}, "config.runs must be a tuple of run declarations"),
])
def test_every_bad_value_fails_in_resolve_with_one_line_naming_the_key(config, message):
  with pytest.raises(ConfigError) as caught:
    config_lib.resolve(config)
  assert message in str(caught.value)
  assert "\n" not in str(caught.value)


def test_an_unknown_model_name_suggests_the_closest():
  with pytest.raises(ConfigError, match="did you mean 'resnet8'"):
    config_lib.resolve({"teacher": {"model": "resnet9"}})


def test_compress_end_is_only_checked_when_there_is_a_pruning_run():
  config = config_lib.resolve({"compress": {"prune_end": 5000}})
  assert config.compress.prune_end == 5000


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_file_resolves(path):
  resolved = config_lib.resolve(_load(path))
  typed = schema.validate(config_lib.plain(resolved))
  assert typed.total_steps == resolved.total_steps
  # The config survives its own config.json: same keys, same values.
  again = config_lib.resolve(json.loads(config_lib.to_json(resolved)))
  assert config_lib.differing_keys(json.loads(config_lib.to_json(resolved)), again) == []


def test_sections_are_frozen_dataclasses():
  for section in (schema.Config, schema.Optimizer, schema.Model, schema.Teacher, schema.Data,
                  schema.Augment, schema.Mesh, schema.Logging, schema.Compress, schema.Export,
                  schema.TeacherCache):
    assert dataclasses.is_dataclass(section) and section.__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(section(), dataclasses.fields(section)[0].name, None)

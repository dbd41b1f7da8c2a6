"""Config defaults, merging, checks and the comparison with a workdir's config.json."""
import json

import ml_collections
import pytest

from kdjax.train import config as config_lib
from kdjax.train.errors import ConfigError


def test_base_config_resolves_and_fills_dataset_values():
  config = config_lib.resolve(config_lib.base_config(), num_classes=10, eval_split="test")
  assert config.teacher.num_classes == 10 and config.student.num_classes == 10
  assert config.teacher.total_steps == config.total_steps
  assert config.data.eval_split == "test"
  # The teacher's optimizer inherits every field it leaves at None.
  assert config.teacher.optimizer.to_dict() == config.optimizer.to_dict()


def test_partial_config_takes_defaults_and_teacher_overrides_stay():
  config = config_lib.resolve({"total_steps": 7, "teacher": {"optimizer": {"name": "adamw"}}})
  assert config.total_steps == 7 and config.batch_size == config_lib.base_config().batch_size
  assert config.teacher.optimizer.name == "adamw"
  assert config.teacher.optimizer.learning_rate == config.optimizer.learning_rate


def test_objective_replaces_the_default_terms():
  config = config_lib.resolve({"objective": {"dkd": {"kind": "dkd", "warmup_steps": 20}}})
  assert list(config.objective) == ["dkd"]


@pytest.mark.parametrize("config, message", [
    ({"totl_steps": 3}, "unknown config key 'totl_steps' (did you mean 'total_steps'?)"),
    ({"data": {"nam": "digits"}}, "unknown config key 'data.nam'"),
    ({"optimizer": 0.1}, "must be a mapping"),
    ({"batch_size": 0}, "config.batch_size must be an integer >= 1"),
    ({"eval_every": -1}, "config.eval_every must be an integer >= 0"),
    ({"batch_size": 10, "accumulation_steps": 4}, "divisible by config.accumulation_steps"),
    ({"student": {"dtype": "float64"}}, "config.student.dtype='float64' is not supported"),
    ({"optimizer": {"momentum": 1.5}}, "config.optimizer.momentum must be in [0, 1)"),
    ({"optimizer": {"warmup_steps": 1000}}, "warmup_steps must be an integer in [0, 1000)"),
    ({"optimizer": {"schedule": "step", "decay_steps": (5, 3)}}, "increasing tuple"),
    ({"optimizer": {"schedule": "step", "decay_steps": (5,), "decay_epochs": (1,)}},
     "exactly one of"),
    ({"teacher": {"optimizer": {"learning_rate": 0.0}}},
     "config.teacher.optimizer.learning_rate must be a positive number"),
    ({"objective": {}}, "at least one term"),
    ({"objective": {"kd": {"weight": 1.0}}}, "must be a mapping with a 'kind'"),
    ({"objective": {"kd": {"kind": "kd", "weight": float("nan")}}}, "weight must be a number >= 0"),
    ({"objective": {"kd": {"kind": "kd", "temperature": 0}}}, "temperature must be > 0"),
    ({"objective": {"kd": {"kind": "kd", "warmup_steps": -5}}}, "warmup_steps must be an integer"),
    ({"data": {"augment": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}}}, "set one to 0"),
    ({"mesh": {"tensor": 2}}, "unknown config key 'mesh.tensor'"),
    ({"mesh": {"data": 0}}, "config.mesh must map"),
    ({"teacher": {"total_steps": 0}}, "config.teacher.total_steps must be an integer >= 1"),
    ({"checked_steps": -1}, "config.checked_steps must be an integer >= 0"),
    ({"checks": False}, "config.checks was removed; set config.checked_steps=0"),
])
def test_bad_values_name_the_key(config, message):
  with pytest.raises(ConfigError) as caught:
    config_lib.resolve(config)
  assert message in str(caught.value)


def test_checked_steps_is_the_one_switch():
  assert config_lib.resolve({}).checked_steps == 10
  assert config_lib.resolve({"checked_steps": 0}).checked_steps == 0
  assert "checks" not in config_lib.base_config()


def test_class_count_must_match_the_dataset():
  with pytest.raises(ConfigError, match="set config.teacher.num_classes=100"):
    config_lib.resolve({"teacher": {"num_classes": 10}}, num_classes=100)
  config = config_lib.resolve({"student": {"num_classes": 100}}, num_classes=100)
  assert config.student.num_classes == 100


def test_not_a_config():
  with pytest.raises(ConfigError, match="return one from get_config"):
    config_lib.resolve(["not", "a", "config"])


def test_differing_keys_ignore_runtime_settings():
  saved = json.loads(config_lib.to_json(config_lib.resolve({}, num_classes=10)))
  same = config_lib.resolve({"log_every": 1, "data": {"worker_count": 2}, "parallel": "pmap",
                             "mesh": {"data": 8}}, num_classes=10)
  assert config_lib.differing_keys(saved, same) == []
  other = config_lib.resolve({"seed": 3, "objective": {"kd": {"kind": "kd"}}}, num_classes=10)
  assert config_lib.differing_keys(saved, other) == ["objective", "seed"]


def test_config_dict_round_trips_through_json():
  config = config_lib.resolve(config_lib.base_config(), num_classes=10)
  again = config_lib.resolve(ml_collections.ConfigDict(json.loads(config_lib.to_json(config))),
                             num_classes=10)
  assert config_lib.differing_keys(json.loads(config_lib.to_json(config)), again) == []


def test_a_config_json_without_newer_keys_still_matches_their_defaults():
  config = config_lib.resolve({}, num_classes=10)
  saved = json.loads(config_lib.to_json(config))
  del saved["compress"], saved["export"], saved["runs"]  # Written before these keys existed.
  assert config_lib.differing_keys(saved, config) == []
  changed = config_lib.resolve({"compress": {"pruning": 0.5}}, num_classes=10)
  assert config_lib.differing_keys(saved, changed) == ["compress.pruning"]

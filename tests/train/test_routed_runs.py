"""distill runs with combine='route': each example distilled from the teacher its teacher_id
names; bad ids fail clearly before the step."""
import types

import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax import lm
from kdjax import train
from kdjax.configs import common
from kdjax.train.kinds import _routed
from tests import helpers

N, L = 10, 4


def _text(**extra):
  tokens = np.arange(N * L, dtype=np.int32).reshape(N, L) % 7
  train_arrays = {"tokens": tokens, "targets": tokens, "mask": np.ones((N, L), bool), **extra}
  return types.SimpleNamespace(train=train_arrays, shapes=None, config=None,
                               example_batch=lambda b: {"tokens": None})


def test_without_a_field_the_training_split_is_cut_in_contiguous_parts():
  routed = _routed.RoutedData(_text(), run="r", num_teachers=2, capacity=0, input_key="tokens")
  np.testing.assert_array_equal(routed.train["teacher_id"], [0] * 5 + [1] * 5)
  it = routed.train_iterator(seed=0, batch_size=4)
  batch = next(it)
  inputs = batch[lm.ROUTED_INPUTS_KEY]
  np.testing.assert_array_equal(inputs["inputs"], batch["tokens"])
  np.testing.assert_array_equal(inputs["teacher_id"], batch["teacher_id"])
  assert it.get_state()["position"] == 1


def test_the_datas_teacher_id_routes_and_bad_ids_fail_clearly():
  ids = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], np.int32)
  routed = _routed.RoutedData(_text(teacher_id=ids), run="r", num_teachers=2, capacity=0,
                              input_key="tokens")
  np.testing.assert_array_equal(routed.train["teacher_id"], ids)
  with pytest.raises(train.ConfigError) as caught:
    _routed.RoutedData(_text(teacher_id=ids + 1), run="r", num_teachers=2, capacity=0,
                       input_key="tokens")
  message = str(caught.value)
  assert "\n" not in message
  assert "run 'r': the training data's 'teacher_id' holds 5 id(s) outside [0, 2) (e.g. 2)" in (
      message)
  # A capacity below a batch's count of one teacher's examples is refused before the step.
  it = _routed.RoutedData(_text(teacher_id=np.zeros(N, np.int32)), run="r", num_teachers=2,
                          capacity=2, input_key="tokens").train_iterator(seed=0, batch_size=4)
  with pytest.raises(data_lib.DataError, match="routes 4 examples of one batch to teacher 0, "
                                               "more than the routing capacity 2"):
    next(it)


def test_image_data_is_refused():
  with pytest.raises(train.ConfigError, match="combine='route' routes the examples of token"):
    _routed.RoutedData(types.SimpleNamespace(), run="r", num_teachers=2, capacity=0,
                       input_key="image")


LM = {"n_heads": 2, "max_len": 16, "dropout_rate": 0.0}


@pytest.mark.slow  # trains two teachers and a student
def test_routed_run_trains(tmp_path):
  config = common.text_lm(sequence_length=16, eval_batch_size=256, batch_size=16, total_steps=20,
                          log_every=1, eval_every=0, checkpoint_every=20)
  config.teacher.model = "transformer_lm"
  config.teacher.model_kwargs = {"d_model": 32, "n_layers": 1, **LM}
  config.teacher.total_steps = 10
  config.models = {"teacher_b": {"model": "transformer_lm",
                                 "model_kwargs": {"d_model": 16, "n_layers": 1, **LM}}}
  config.student.model = "transformer_lm"
  config.student.model_kwargs = {"d_model": 16, "n_layers": 1, **LM}
  config.optimizer.learning_rate = 3e-3
  config.objective = common.ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
  config.progress_bar = False
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "teacher_b", "kind": "supervised", "model": "teacher_b", "steps": 10},
      {"name": "student_routed", "kind": "distill", "model": "student",
       "teachers": ("teacher", "teacher_b"), "combine": "route", "capacity": 16},
  )
  results = train.train_and_evaluate(helpers.with_overrides(config, {}), str(tmp_path))
  assert np.isfinite(results["student_routed"]["perplexity"])
  records = train.read_metrics(str(tmp_path / "student_routed" / "metrics.jsonl"))
  losses = [r["loss"] for r in records if not r.get("eval")]
  assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])

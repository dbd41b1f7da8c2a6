"""configs/own_data.py: a config for the user's own images, with no dataset's constants in it.

Its measured gain on real MNIST is in docs/training.md ("Your own data"); here it is checked
on small datasets written by the test, of other class counts and image shapes than MNIST's.
"""
import json

import pytest

from kdjax import train
from kdjax.train import config as config_lib
from kdjax.train import smoke
from tests.data.test_files import CLASS_NAMES, write_folder, write_idx_dir
from tests.train.test_smoke import load

CONFIG = "configs/own_data.py"


def mlp_params(widths):
  """Weights and biases of dense layers widths[0] -> widths[1] -> ... -> widths[-1]."""
  return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def test_the_data_argument_names_the_dataset():
  assert load(CONFIG, "idx:/data/mnist").data.name == "idx:/data/mnist"
  assert load(CONFIG, "folder:/data/images").data.name == "folder:/data/images"


def test_nothing_about_the_data_is_fixed_and_both_students_get_the_same_budget():
  c = config_lib.resolve(load(CONFIG, "folder:/data/images"))
  # Class count and image shape come from the data.
  assert c.teacher.num_classes is None and c.student.num_classes is None
  assert c.data.image_size == 0
  # The standard pipeline: the student alone and distilled share model, steps and optimizer;
  # only the objective differs (cross-entropy alone for the baseline).
  assert not c.runs and c.compare_baseline
  # KD, T^2-scaled by the loss, carries most of the distilled student's objective.
  assert c.objective.kd.kind == "kd" and c.objective.kd.temperature > 1
  assert c.objective.kd.weight > c.objective.ce.weight


def test_a_wrong_class_count_for_the_data_is_refused():
  c = load(CONFIG, "folder:/data/images")
  c.student.num_classes = 10
  with pytest.raises(train.ConfigError, match="config.student.num_classes=10 but dataset"):
    config_lib.resolve(c, num_classes=3)


@pytest.mark.slow  # Three runs of a few steps each, on two written datasets.
@pytest.mark.parametrize("source", ["folder", "idx"])
def test_own_data_runs_end_to_end_on_other_shapes_and_class_counts(tmp_path, source):
  if source == "folder":  # 3 classes of 8x8 RGB images, class folders under train/ and test/.
    root, num_classes, shape = str(tmp_path / "images"), len(CLASS_NAMES), (8, 8, 3)
    write_folder(root, per_class=20, rgb=True)
  else:  # 10 classes of 8x8 greyscale images as IDX files.
    root, num_classes, shape = write_idx_dir(str(tmp_path / "idx")), 10, (8, 8, 1)
  config = smoke.smoke_config(load(CONFIG, f"{source}:{root}"))
  config.progress_bar = False
  workdir = tmp_path / "run"
  results = train.train_and_evaluate(config, str(workdir))
  assert set(results) == {"teacher", "student", "student_kd"}
  assert results["student"]["steps"] == results["student_kd"]["steps"] == smoke.SMOKE_STEPS
  assert results["student"]["params"] == results["student_kd"]["params"]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["teacher"]["num_classes"] == saved["student"]["num_classes"] == num_classes
  # Both MLPs were sized from the data: inputs of prod(shape) pixels, num_classes outputs.
  pixels = shape[0] * shape[1] * shape[2]
  assert results["teacher"]["params"] == mlp_params([pixels, 1200, 1200, num_classes])
  assert results["student"]["params"] == mlp_params([pixels, 32, num_classes])

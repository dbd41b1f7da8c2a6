"""The CIFAR-100 recipes in configs/cifar100: every file, every pair, on TFDS mock data.

Each recipe file runs its whole pipeline for two steps (teacher, distilled student, evaluation,
checkpoints) on a pair of its own, so every file and every pair is trained at least once; every
other (file, pair) combination is traced through ``distill_step`` with ``jax.eval_shape``, which
checks the taps, adapters and shapes without compiling.
"""
import glob
import importlib.util
import itertools
import os

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

import kdjax
from kdjax import data
from kdjax import train
from kdjax.configs import cifar100 as recipes
from kdjax.models import zoo
from kdjax.train import builders
from kdjax.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "cifar100", "*.py")))
DISTILL_FILES = [f for f in RECIPE_FILES if os.path.basename(f) != "teacher.py"]
# (recipe, pair) combinations a recipe refuses, with the reason in its error.
UNSUPPORTED = {("fsp", "resnet50-mobilenetv2"), ("fsp", "resnet32x4-shufflenetv2")}


def _name(path):
  return os.path.basename(path)[:-3]


def _assign_pairs():
  """Each distillation file trains on a pair of its own; together they cover every pair."""
  pairs, assigned = itertools.cycle(recipes.PAIRS), {}
  for path in DISTILL_FILES:
    assigned[path] = next(p for p in pairs if (_name(path), p) not in UNSUPPORTED)
  return assigned


RUN_PAIRS = _assign_pairs()
MOCK_EXAMPLES = 16


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def smoke(config):
  """The recipe, shrunk to two steps of batch 8 (the test suite's 8 devices)."""
  config.batch_size = 8
  config.total_steps = 2
  config.teacher.total_steps = 2
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint_every = 2
  config.compare_baseline = False
  config.progress_bar = False
  config.data.eval_batch_size = 8
  if config.stages:
    config.stages = tuple({**s, "steps": 1 if i < len(config.stages) - 1 else 0}
                          for i, s in enumerate(config.stages))
  return config


def test_the_recipes_cover_every_method_and_pair():
  names = {os.path.basename(f)[:-3] for f in RECIPE_FILES}
  assert {"kd", "dkd", "fitnets", "at", "rkd", "crd", "dist", "fitnets_then_kd", "cc", "ft",
          "ab", "fsp", "ofd", "nst", "mlkd", "teacher"} <= names
  assert set(RUN_PAIRS.values()) == set(recipes.PAIRS)


def test_protocol():
  config = config_lib.resolve(load(os.path.join(REPO, "configs", "cifar100", "dkd.py"),
                                   "resnet56-resnet20"), num_classes=100)
  assert (config.batch_size, config.total_steps) == (64, 240 * 50_000 // 64)
  assert config.optimizer.decay_epochs == (150.0, 180.0, 210.0)
  assert (config.optimizer.learning_rate, config.teacher.optimizer.learning_rate) == (0.05, 0.05)
  assert (config.optimizer.weight_decay, config.optimizer.momentum) == (5e-4, 0.9)
  assert config.objective.dkd.beta == 2.0
  assert config.objective.dkd.warmup_steps == round(20 * 50_000 / 64)
  shuffle = load(os.path.join(REPO, "configs", "cifar100", "kd.py"), "resnet32x4-shufflenetv2")
  assert (shuffle.optimizer.learning_rate, shuffle.teacher.optimizer.learning_rate) == (0.01, 0.05)
  with pytest.raises(ValueError, match="unknown CIFAR-100 pair 'resnet9-resnet1'"):
    load(os.path.join(REPO, "configs", "cifar100", "kd.py"), "resnet9-resnet1")


def test_recipes_read_the_zoo_stage_layout():
  # The taps AB and OFD read: a ResNet block's last BatchNorm (bn2 for basic, bn3 for bottleneck
  # blocks), a VGG group's last BatchNorm; a Wide ResNet's margin is the BatchNorm its stage
  # output enters next.
  assert recipes.preact("resnet8x4", "stage1") == "stage1/block_0/bn2"
  assert recipes.preact("resnet56", "stage3") == "stage3/block_8/bn2"
  assert recipes.preact("resnet50", "stage2") == "stage2/block_3/bn3"
  assert recipes.preact("vgg13", "stage4") == "stage4/bn1"
  assert recipes.preact("wrn_40_2", "stage2") == "stage2"
  assert recipes.bn_before_relu("wrn_40_2", "stage2") == "stage3/block_0/bn1"
  assert recipes.bn_before_relu("wrn_40_2", "stage3") == "bn"
  assert zoo.stage_layout("wrn_16_2").channels == (16, 32, 64, 128)
  assert zoo.stage_layout("vgg8").channels == (64, 128, 256, 512, 512)
  assert zoo.stage_layout("mobilenetv2").stages[-1] == "stage7"
  with pytest.raises(ValueError, match="no rule for 'mobilenetv2'"):
    recipes.bn_before_relu("mobilenetv2", "stage2")
  with pytest.raises(ValueError, match="no convolutional stages"):
    zoo.stage_layout("mlp")


@pytest.fixture(name="mock_cifar100")
def fixture_mock_cifar100():
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield


@pytest.mark.slow
@pytest.mark.parametrize("path", DISTILL_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_recipe_runs_on_mock_cifar100(path, tmp_path, mock_cifar100):
  config = smoke(load(path, RUN_PAIRS[path]))
  config.data.data_dir = str(tmp_path / "tfds")
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert set(results) == {"teacher", "student_kd"}
  for run in results:
    assert results[run]["count"] == MOCK_EXAMPLES
    assert 0.0 <= results[run]["accuracy"] <= 1.0
    assert os.path.isdir(os.path.join(workdir, run, "checkpoints", "2"))
  records = train.read_metrics(os.path.join(workdir, "student_kd", "metrics.jsonl"))
  losses = [r["loss"] for r in records if not r.get("eval")]
  assert len(losses) == 2 and all(jnp.isfinite(jnp.asarray(losses)))


@pytest.mark.slow
def test_teacher_recipe_trains_only_the_teacher(tmp_path, mock_cifar100):
  config = smoke(load(os.path.join(REPO, "configs", "cifar100", "teacher.py"), "resnet56"))
  config.data.data_dir = str(tmp_path / "tfds")
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(results) == {"teacher"} and results["teacher"]["model"] == "resnet56"
  assert not os.path.exists(tmp_path / "run" / "student_kd")


def _traced_step(config, info):
  """``distill_step`` of the recipe, traced abstractly (no compilation, no parameters)."""
  config = config_lib.resolve(config, num_classes=info.num_classes, eval_split=info.eval_split)
  supplied = {"num_data": info.num_train}
  if any(term.get("kind") == "ofd" for term in config.objective.values()):
    # OFD reads its margins from the trained teacher's BatchNorm parameters: a concrete one.
    supplied["teacher_model"] = builders.make_model(config.teacher, side="teacher",
                                                    input_shape=info.input_shape,
                                                    rng=jax.random.key(1))
  objective = builders.make_objective(config.objective, supplied=supplied, stages=config.stages)
  batch = {"image": jnp.zeros((8, *info.input_shape), jnp.float32),
           "label": jnp.zeros((8,), jnp.int32), "index": jnp.arange(8, dtype=jnp.int32),
           "mask": jnp.ones((8,), bool)}

  def run(batch):
    student = builders.make_model(config.student, side="student", input_shape=info.input_shape,
                                  rng=jax.random.key(0), taps=objective.needs.student)
    teacher = builders.make_model(config.teacher, side="teacher", input_shape=info.input_shape,
                                  rng=jax.random.key(1), taps=objective.needs.teacher)
    tx, _ = builders.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                    steps_per_epoch=recipes.STEPS_PER_EPOCH)
    state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                      tx=tx, rng=jax.random.key(2), example_batch=batch)
    return kdjax.distill_step(state, batch)[1]

  return jax.eval_shape(run, batch)


@pytest.mark.parametrize("name, pair", sorted(UNSUPPORTED))
def test_a_recipe_refuses_a_pair_it_cannot_compare_and_names_one_it_can(name, pair):
  with pytest.raises(ValueError, match=r"equal channel counts.*e\.g\. --config=configs/cifar100/"):
    load(os.path.join(REPO, "configs", "cifar100", f"{name}.py"), pair)


@pytest.mark.parametrize("path, pair", [
    (path, pair) for path in DISTILL_FILES for pair in recipes.PAIRS
    if RUN_PAIRS[path] != pair and (_name(path), pair) not in UNSUPPORTED],
    ids=lambda v: os.path.basename(v)[:-3] if v.endswith(".py") else v)
def test_every_recipe_and_pair_traces(path, pair, mock_cifar100):
  info = data.get_info("tfds:cifar100")
  metrics = _traced_step(load(path, pair), info)
  assert metrics["loss"].shape == () and metrics["accuracy"].shape == ()

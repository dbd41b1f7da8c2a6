"""``kdjax --smoke`` (kdjax.train.smoke): any config cut to a few steps, its schedules scaled."""
import importlib.util
import json
import os

import pytest

from kdjax import train
from kdjax.train import config as config_lib
from kdjax.train import smoke
from tests.train.conftest import REPO, cli


def load(relative, *args):
  path = os.path.join(REPO, relative)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def long_config():
  """Every step-measured key set, at values that scale to whole numbers for 40 steps."""
  c = config_lib.base_config()
  c.total_steps = 1000
  c.teacher.total_steps = 2000
  c.log_every, c.eval_every, c.checkpoint_every = 50, 500, 100
  c.optimizer.warmup_steps = 500
  c.optimizer.schedule = "step"
  c.optimizer.decay_steps = (250, 750)
  c.teacher.optimizer.warmup_steps = 600
  c.objective = {"ce": {"kind": "cross_entropy", "weight": 1.0},
                 "dkd": {"kind": "dkd", "weight": 1.0, "warmup_steps": 250}}
  c.compress.prune_begin, c.compress.prune_end, c.compress.prune_frequency = 100, 800, 10
  c.runs = ({"name": "teacher", "kind": "supervised", "model": "teacher", "steps": 2000},
            {"name": "student_kd", "kind": "distill", "teachers": ("teacher",),
             "steps": 20, "objective": {"kd": {"kind": "kd", "warmup_steps": 10}}})
  return c


def test_every_step_count_is_capped_and_every_schedule_scaled():
  config = long_config()
  before = config_lib.to_json(config)
  c = smoke.smoke_config(config, steps=40)
  assert config_lib.to_json(config) == before  # The given config is not changed.
  # Student runs: 1000 -> 40 steps, factor 0.04; the teacher's: 2000 -> 40, factor 0.02.
  assert (c.total_steps, c.teacher.total_steps) == (40, 40)
  assert c.optimizer.warmup_steps == 20 and c.optimizer.decay_steps == (10, 30)
  assert c.teacher.optimizer.warmup_steps == 12
  assert c.objective["dkd"]["warmup_steps"] == 10
  assert c.log_every == 2
  assert (c.eval_every, c.checkpoint_every) == (20, 20)  # 20 and 4, at least half the run.
  assert (c.compress.prune_begin, c.compress.prune_end, c.compress.prune_frequency) == (4, 32, 1)
  teacher, student_kd = c.runs
  assert teacher["steps"] == 40
  # A run already shorter than the cap keeps its steps and its own warm-ups.
  assert student_kd["steps"] == 20 and student_kd["objective"]["kd"]["warmup_steps"] == 10
  config_lib.resolve(c)  # The shrunk config passes every check.


def test_stages_fit_the_shrunk_run():
  c = config_lib.base_config()
  c.objective = {"ce": {"kind": "cross_entropy", "weight": 1.0},
                 "kd": {"kind": "kd", "weight": 1.0}}
  c.stages = ({"steps": 600, "terms": ("ce",)}, {"steps": 0, "terms": ("ce", "kd")})
  shrunk = smoke.smoke_config(c)
  assert [s["steps"] for s in shrunk.stages] == [1, 0]
  config_lib.resolve(shrunk)


def test_lm_distill_with_few_steps_fails_on_its_warmup_unless_smoke():
  config = load("configs/lm/distill.py")
  config.total_steps = 4
  config.teacher.total_steps = 4
  with pytest.raises(train.ConfigError, match="warmup_steps must be an integer in"):
    config_lib.resolve(config)
  shrunk = smoke.smoke_config(load("configs/lm/distill.py"))
  resolved = config_lib.resolve(shrunk)
  assert resolved.total_steps == resolved.teacher.total_steps == smoke.SMOKE_STEPS
  assert resolved.optimizer.warmup_steps < resolved.total_steps
  assert resolved.teacher.optimizer.warmup_steps < resolved.teacher.total_steps


def test_bad_smoke_steps():
  with pytest.raises(ValueError, match="smoke steps must be an integer >= 1"):
    smoke.smoke_config(config_lib.base_config(), steps=0)


@pytest.mark.slow  # Trains the LM teacher and both students for 4 steps each.
def test_lm_distill_smoke_runs(tmp_path):
  config = smoke.smoke_config(load("configs/lm/distill.py"))
  config.progress_bar = False
  results = train.train_and_evaluate(config, str(tmp_path / "lm"))
  assert set(results) == {"teacher", "student", "student_kd"}
  assert all(results[r]["steps"] == smoke.SMOKE_STEPS for r in results)
  assert all(results[r]["perplexity"] > 1 for r in results)


@pytest.mark.slow  # A `python -m kdjax.main` process: three runs of 4 steps.
def test_quickstart_smoke_from_the_command_line(tmp_path):
  workdir = tmp_path / "qs"
  process = cli("--config=configs/quickstart.py", "--smoke", "--config.progress_bar=False",
                f"--workdir={workdir}")
  out, err = process.communicate(timeout=1200)
  assert process.returncode == 0, err[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert {r: e["steps"] for r, e in results.items()} == {
      "teacher": 4, "student": 4, "student_kd": 4}
  config = json.loads((workdir / "config.json").read_text())
  assert (config["total_steps"], config["eval_every"], config["checkpoint_every"]) == (4, 2, 2)
  # The quickstart ends by naming where the results are and the next command.
  assert f"results: {workdir}/results.json" in out
  assert f"next: kdjax report {workdir}" in out

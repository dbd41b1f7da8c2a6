"""The ``several_students`` run kind: each student ends exactly where its own ``distill`` run
ends, from one teacher forward per step; bad declarations fail before any work; exact resume."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import kdjax
from kdjax import models, objectives, strategies
from kdjax import workdir as contract
from kdjax.train import rundata
from kdjax.train.errors import ConfigError
from tests.train.conftest import tiny, train_losses

STEPS = 6
KD = {"kd": {"kind": "kd", "weight": 1.0, "temperature": 2.0}}


def _config(**overrides):
  config = tiny(**{"total_steps": STEPS, "teacher.total_steps": 4, "checkpoint_every": 3,
                   "eval_every": 0, "logging.tensorboard": False, **overrides})
  config.models = {"wide": {"model": "mlp", "model_kwargs": {"hidden": (12,)}}}
  return config


def _state_tree(workdir, run):
  path = os.path.join(contract.checkpoint_dir(workdir, run), str(STEPS), "state")
  return ocp.StandardCheckpointer().restore(path)


def _assert_same_student(alone, together, rtol, atol):
  """The trained parameters, model state, optimizer state and objective of two checkpoints."""
  for key in ("params", "student_state", "opt_state", "objective_state", "step"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=rtol, atol=atol),
                 alone[key], together[key])


@pytest.mark.slow
def test_each_student_equals_its_own_distill_run(tmp_path):
  """Two students of different architectures (one with its own objective), one teacher: each
  ends where a separate ``distill`` run with the same seed and data order ends, step by step."""
  config = _config()
  config.runs = (
      {"name": "teacher", "kind": "supervised", "model": "teacher"},
      {"name": "alone_small", "kind": "distill", "model": "student", "teachers": ("teacher",)},
      {"name": "alone_wide", "kind": "distill", "model": "wide", "teachers": ("teacher",),
       "objective": KD},
      {"name": "pair", "kind": "several_students", "teachers": ("teacher",),
       "students": ("student", {"name": "wide", "model": "wide", "objective": KD})},
  )
  workdir = str(tmp_path / "w")
  results = kdjax.train.train_and_evaluate(config, workdir)
  members = {m["run"]: m for m in results["pair"]["members"]}
  assert list(members) == ["student", "wide"]
  trees = _state_tree(workdir, "pair")
  together = train_losses(workdir, "pair")
  for alone, name in (("alone_small", "student"), ("alone_wide", "wide")):
    # Bit-identical on XLA:CPU; a compiler may fuse float32 sums of one program differently
    # from a program of their own: a few ulps at most, far below what another key, batch or
    # teacher output would give.
    _assert_same_student(_state_tree(workdir, alone), trees[name], rtol=1e-6, atol=1e-7)
    records = kdjax.train.read_metrics(os.path.join(workdir, "pair", "metrics.jsonl"))
    per_step = {r["step"]: r[f"{name}/loss"] for r in records if not r.get("eval")}
    np.testing.assert_allclose([per_step[s] for s in range(1, STEPS + 1)],
                               [train_losses(workdir, alone)[s] for s in range(1, STEPS + 1)],
                               rtol=1e-6)
    for metric in ("accuracy", "agreement", "ece", "macro_f1", "top5"):
      assert members[name][metric] == pytest.approx(results[alone][metric], abs=1e-6), metric
    assert members[name]["params"] == results[alone]["params"]
    assert members[name]["model"] == results[alone]["model"]
  assert sorted(together) == list(range(1, STEPS + 1))
  # Rows of the table: one per student.
  rows = [row for row, _ in contract.result_rows(results)]
  assert "pair[student]" in rows and "pair[wide]" in rows


def _linear(w):
  return models.from_apply_fn(lambda p, x: x @ p["w"], {"w": jnp.asarray(w)})


def test_the_step_runs_the_teacher_once_and_updates_each_student_as_distill_step():
  rng = np.random.default_rng(0)
  b, d, c = 8, 5, 4
  batch = {"image": rng.standard_normal((b, d)).astype(np.float32),
           "label": rng.integers(0, c, b).astype(np.int32)}
  calls = []

  def teacher_apply(p, ms, x, *, train, rng):
    del train, rng
    calls.append(1)
    return models.Outputs(logits=x @ p["w"]), ms

  teacher = models.Model(apply=teacher_apply, params={"w": jnp.asarray(
      rng.standard_normal((d, c)), jnp.float32)})
  kd = objectives.combine({"kd": objectives.kd(temperature=2.0)})
  both = objectives.combine({"ce": objectives.cross_entropy(), "kd": objectives.kd()})
  states = [kdjax.DistillState.create(
      student=_linear(rng.standard_normal((d, c)).astype(np.float32)), teacher=teacher,
      objective=obj, tx=tx, rng=jax.random.key(k), example_batch=batch)
      for k, (obj, tx) in enumerate([(kd, optax.sgd(0.3)), (both, optax.adam(0.01)),
                                     (kd, optax.sgd(0.1, momentum=0.9))])]
  several = strategies.SeveralStudentsState.create(states, names=("a", "b", "c"))
  calls.clear()
  new, metrics = jax.jit(strategies.several_students_step)(several, batch)
  assert len(calls) == 1  # One teacher forward traced for three students.
  total = 0.0
  for k, name in enumerate(("a", "b", "c")):
    alone, m = jax.jit(kdjax.distill_step)(states[k], batch)
    np.testing.assert_allclose(new.students[k].params["student"]["w"],
                               alone.params["student"]["w"], rtol=1e-6, atol=1e-7)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 new.students[k].opt_state, alone.opt_state)
    assert float(metrics[f"{name}/loss"]) == pytest.approx(float(m["loss"]), rel=1e-6)
    assert float(metrics[f"{name}/agreement"]) == float(m["agreement"])
    total += float(m["loss"])
  assert float(metrics["loss"]) == pytest.approx(total, rel=1e-6)
  assert int(new.step) == 1 and new.students[0].teacher_apply is None
  assert set(new.checkpoint_tree()) == {"a", "b", "c"}


def _two_linear_students(seed, b, d, c, tx):
  """Two linear students of one linear teacher (CE + KD), and a batch of ``b`` examples."""
  rng = np.random.default_rng(seed)
  batch = {"image": rng.standard_normal((b, d)).astype(np.float32),
           "label": rng.integers(0, c, b).astype(np.int32)}
  teacher = _linear(rng.standard_normal((d, c)).astype(np.float32))
  kd = objectives.combine({"ce": objectives.cross_entropy(), "kd": objectives.kd()})
  states = [kdjax.DistillState.create(
      student=_linear(rng.standard_normal((d, c)).astype(np.float32)), teacher=teacher,
      objective=kd, tx=tx, rng=jax.random.key(k), example_batch=batch)
      for k in range(2)]
  return strategies.SeveralStudentsState.create(states), batch


def test_the_step_under_pmap_equals_the_step_under_jit():
  """Under ``pmap`` every student's gradients are averaged over the devices as
  ``distill_step`` averages them: the same update as one device on the whole batch."""
  several, batch = _two_linear_students(1, 2 * jax.local_device_count(), 5, 3, optax.sgd(0.5))
  on_one, _ = jax.jit(strategies.several_students_step)(several, batch)
  runner = kdjax.parallel.make_runner("pmap", step_fn=strategies.several_students_step)
  placed, _ = runner.step(runner.put_state(several), batch)
  on_all = runner.host_state(placed)
  for k in range(2):
    np.testing.assert_allclose(on_all.students[k].params["student"]["w"],
                               on_one.students[k].params["student"]["w"], rtol=1e-5, atol=1e-6)


def test_shard_student_shards_every_student_and_keeps_the_update():
  """With ``shard_student`` and an ``fsdp`` axis, each student's parameters and optimizer
  state are split over it (as a ``distill`` run's are), and the update is the one of a single
  device."""
  d, c = 64, 32
  several, batch = _two_linear_students(2, 8, d, c, optax.adam(0.01))
  on_one, _ = jax.jit(strategies.several_students_step)(several, batch)
  runner = kdjax.parallel.MeshRunner(kdjax.parallel.make_mesh({"data": -1, "fsdp": 2}),
                                     shard_student=True,
                                     step_fn=strategies.several_students_step)
  placed = runner.put_state(several)
  for k in range(2):
    w = placed.students[k].params["student"]["w"]
    mu = placed.students[k].opt_state[0].mu["student"]["w"]
    for x in (w, mu):
      assert x.sharding.shard_shape(x.shape) == (d // 2, c), x.sharding
  placed, _ = runner.step(placed, batch)
  for k in range(2):
    np.testing.assert_allclose(placed.students[k].params["student"]["w"],
                               on_one.students[k].params["student"]["w"], rtol=1e-5, atol=1e-6)


def test_the_state_refuses_students_of_different_teachers():
  batch = {"image": np.zeros((4, 3), np.float32), "label": np.zeros((4,), np.int32)}
  kd = objectives.combine({"kd": objectives.kd()})
  make = lambda t: kdjax.DistillState.create(
      student=_linear(np.ones((3, 2), np.float32)), teacher=t, objective=kd, tx=optax.sgd(0.1),
      rng=jax.random.key(0), example_batch=batch)
  a, b = make(_linear(np.ones((3, 2), np.float32))), make(_linear(np.ones((3, 2), np.float32)))
  with pytest.raises(ValueError, match="built with another teacher"):
    strategies.SeveralStudentsState.create([a, b], names=("a", "b"))
  with pytest.raises(ValueError, match="distinct names"):
    strategies.SeveralStudentsState.create([a, a], names=("a", "a"))


def _runs(students, **extra):
  return ({"name": "teacher", "kind": "supervised", "model": "teacher"},
          {"name": "group", "kind": "several_students", "teachers": ("teacher",),
           "students": students, **extra})


@pytest.mark.parametrize("students, extra, message", [
    ((), {}, r"^config\.runs\[1\]\.students is empty"),
    (("student", {"name": "student", "model": "wide"}), {},
     r"^config\.runs\[1\]\.students\[1\]\.name='student' is used twice"),
    (("student", "tall"), {},
     r"^config\.runs\[1\]\.students\[1\]\.model='tall' is neither 'teacher', 'student' nor a "
     r"key of config\.models"),
    (({"name": "x"},), {}, r"^config\.runs\[1\]\.students\[0\]\.model is missing"),
    (({"model": "wide", "lr": 0.1},), {}, r"^config\.runs\[1\]\.students\[0\] has no key\(s\) "
     r"\['lr'\]"),
    (({"model": "wide", "optimizer": {"learning_rate": -1.0}},), {},
     r"^config\.runs\[1\]\.students\[0\]\.optimizer\.learning_rate must be a positive number"),
    (({"model": "wide", "objective": {}},), {},
     r"^config\.runs\[1\]\.students\[0\]\.objective needs at least one term"),
    (("student",), {"teachers": ()}, r"^config\.runs\[1\]\.teachers is empty"),
])
def test_bad_declarations_fail_before_any_work(tmp_path, students, extra, message):
  config = _config()
  config.runs = _runs(students, **extra)
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError, match=message) as e:
    kdjax.train.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists() or not os.listdir(workdir)  # Nothing was written.


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
  config = _config()
  config.runs = _runs(("student", {"name": "wide", "model": "wide",
                                   "optimizer": {"learning_rate": 0.02}}))
  straight = str(tmp_path / "straight")
  kdjax.train.train_and_evaluate(config, straight)

  make = rundata.ImageData.train_iterator

  class Interrupted(Exception):
    pass

  class Stops:
    """The group's batches, stopping the run after its step 4 (its checkpoint 3 is kept)."""

    def __init__(self, inner):
      self.inner, self.seen = inner, 0

    def __iter__(self):
      return self

    def __next__(self):
      self.seen += 1
      if self.seen == 5:
        raise Interrupted()
      return next(self.inner)

    def __getattr__(self, name):
      return getattr(self.inner, name)

  calls = []

  def train_iterator(self, **kw):
    calls.append(1)
    inner = make(self, **kw)
    return Stops(inner) if len(calls) == 2 else inner  # The teacher's, then the group's.

  monkeypatch.setattr(rundata.ImageData, "train_iterator", train_iterator)
  resumed = str(tmp_path / "resumed")
  with pytest.raises(Interrupted):
    kdjax.train.train_and_evaluate(config, resumed)
  monkeypatch.setattr(rundata.ImageData, "train_iterator", make)
  assert sorted(os.listdir(contract.checkpoint_dir(resumed, "group"))) == ["3"]
  results = kdjax.train.train_and_evaluate(config, resumed)
  for name in ("student", "wide"):
    _assert_same_student(_state_tree(straight, "group")[name],
                         _state_tree(resumed, "group")[name], rtol=0, atol=0)
  assert train_losses(straight, "group") == train_losses(resumed, "group")
  assert [m["run"] for m in results["group"]["members"]] == ["student", "wide"]


@pytest.mark.slow
def test_the_config_runs_every_student(tmp_path):
  from tests.train.test_strategy_configs import load  # pylint: disable=g-import-not-at-top
  results = kdjax.train.train_and_evaluate(load("strategies/several_students.py"),
                                           str(tmp_path / "run"))
  assert list(results) == ["teacher", "students"]
  members = results["students"]["members"]
  assert [m["run"] for m in members] == ["mlp_8", "mlp_64", "cnn_4"]
  assert [m["model_section"] for m in members] == ["student", "mlp_64", "cnn_4"]
  assert len({m["params"] for m in members}) == 3  # Three architectures.
  for m in members:
    assert np.isfinite(m["accuracy"]) and np.isfinite(m["agreement"]), m
  records = kdjax.train.read_metrics(tmp_path / "run" / "students" / "metrics.jsonl")
  assert [r["step"] for r in records if not r.get("eval")] == list(range(1, 13))

"""Language-model runs of the run layer: the chunked token term, the model mesh axis, and a
Hugging Face teacher distilled end to end into a student that transformers loads."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import lm
from kdjax import models
from kdjax import objectives
from kdjax.models import Outputs
from kdjax.train import kinds
from kdjax.train import pipeline
from tests.train.test_lm_config import lm_config, write_decoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The chunked term ------------------------------------------------------------------------------


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_divergence(zs, zt, beta, temperature, mask):
  """T^2 x the generalized JSD per token, masked token mean, written out in numpy (float64)."""
  ls, lt = _np_log_softmax(zs / temperature), _np_log_softmax(zt / temperature)
  ps, pt = np.exp(ls), np.exp(lt)
  kl = lambda p, lp, lq: (p * (lp - lq)).sum(-1)  # noqa: E731
  if beta == 0.0:
    per = kl(pt, lt, ls)
  elif beta == 1.0:
    per = kl(ps, ls, lt)
  else:
    lm_ = np.log(beta * pt + (1 - beta) * ps)
    per = beta * kl(pt, lt, lm_) + (1 - beta) * kl(ps, ls, lm_)
  return temperature**2 * (per * mask).sum() / mask.sum()


def _outputs(hidden, head, logits=None):
  return Outputs(logits=hidden @ head if logits is None else logits,
                 features={"pre_logits": hidden, "head": head})


@pytest.fixture(scope="module")
def arrays():
  ks = jax.random.split(jax.random.key(0), 4)
  hs, ws = jax.random.normal(ks[0], (2, 5, 6)), jax.random.normal(ks[1], (6, 11))
  ht, wt = jax.random.normal(ks[2], (2, 5, 8)), jax.random.normal(ks[3], (8, 11))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  return hs, ws, ht, wt, mask


@pytest.mark.parametrize("kind", sorted(lm.CHUNKED_KINDS))
def test_chunked_term_equals_the_formula_and_the_plain_term(arrays, kind):
  hs, ws, ht, wt, mask = arrays
  beta, temperature = lm.CHUNKED_KINDS[kind], 2.0
  batch = {"mask": mask}
  chunked = lm.chunked_kd_term(beta=beta, temperature=temperature, chunk_size=3)
  plain = objectives.term_kinds()[kind].ctor(temperature=temperature)

  @jax.jit
  def chunked_loss(hs, ws):
    return chunked.apply({}, {}, _outputs(hs, ws), _outputs(ht, wt), batch, 0)[0]

  @jax.jit
  def plain_loss(hs, ws):
    return plain.apply({}, {}, _outputs(hs, ws), _outputs(ht, wt), batch, 0)[0]

  got = chunked_loss(hs, ws)
  want = _np_divergence(np.asarray(hs @ ws, np.float64), np.asarray(ht @ wt, np.float64), beta,
                        temperature, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got, plain_loss(hs, ws), rtol=1e-5)
  # Gradients equal the plain term's (through logits = h @ W) ...
  g_chunked = jax.grad(chunked_loss, argnums=(0, 1))(hs, ws)
  g_plain = jax.grad(plain_loss, argnums=(0, 1))(hs, ws)
  for a, b in zip(g_chunked, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # ... and finite differences.
  check_grads(chunked_loss, (hs, ws), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_chunked_term_declares_its_taps_and_checks_its_arguments():
  term = lm.chunked_kd_term(chunk_size=4)
  assert term.needs.student == term.needs.teacher == ("pre_logits", "head")
  assert term.needs.batch == ("mask",)
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    lm.chunked_kd_term(chunk_size=0)
  with pytest.raises(ValueError, match="beta must be a number in"):
    lm.chunked_kd_term(beta=2.0)


# Runs with Hugging Face directories ------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_runs")
  return {"teacher": write_decoder(root / "teacher", hidden=32, layers=2, seed=1),
          "student": write_decoder(root / "student", seed=2)}


def _run_steps(hf_dirs, tmp_path, objective, steps=2, **sections):
  """``steps`` updates of the ``student_kd`` run, built by the run layer; returns its losses."""
  config = lm_config(teacher={"checkpoint": hf_dirs["teacher"]},
                     student={"init": hf_dirs["student"]}, objective=objective,
                     runs=({"name": "teacher", "kind": "load"},
                           {"name": "student_kd", "kind": "distill", "teachers": ("teacher",)}),
                     **sections)
  config, data = pipeline.resolve(config)
  decls = {d.name: d for d in kinds.declarations(config)}
  ctx = kinds.Context(config=config, data=data, workdir=str(tmp_path), decls=decls)
  plan = kinds.KINDS["distill"].plan(ctx, decls["student_kd"])
  runner = plan.make_runner()
  state = runner.put_state(plan.init_state())
  batches = data.train_iterator(seed=config.seed, batch_size=config.batch_size)
  out = []
  for _ in range(steps):
    state, metrics = runner.step(state, next(batches))
    out.append({k: float(v) for k, v in metrics.items() if k in ("loss", "kd", "ce")})
  return out, runner


PLAIN = {"ce": {"kind": "cross_entropy", "weight": 0.5, "label_key": "targets"},
         "kd": {"kind": "kd", "weight": 0.5, "temperature": 2.0}}
CHUNKED = {**PLAIN, "kd": {**PLAIN["kd"], "chunk_size": 24}}


@pytest.fixture(scope="module")
def chunked_run(hf_dirs, tmp_path_factory):
  """Two steps of the chunked objective on one model axis (8 data devices)."""
  return _run_steps(hf_dirs, tmp_path_factory.mktemp("chunked"), CHUNKED)


def test_a_chunked_run_follows_the_plain_runs_trajectory(hf_dirs, chunked_run, tmp_path):
  assert jax.device_count() == 8
  plain, _ = _run_steps(hf_dirs, tmp_path / "plain", PLAIN)
  chunked, _ = chunked_run
  for a, b in zip(plain, chunked):
    np.testing.assert_allclose([b["loss"], b["kd"]], [a["loss"], a["kd"]], rtol=1e-5)


def test_mesh_model_2_follows_the_one_axis_trajectory(hf_dirs, chunked_run, tmp_path):
  one, runner_one = chunked_run
  two, runner_two = _run_steps(hf_dirs, tmp_path / "m2", CHUNKED, mesh={"model": 2})
  assert dict(runner_one.mesh.shape) == {"data": 8, "fsdp": 1, "model": 1}
  assert dict(runner_two.mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  # The student's and the teacher's parameters really are split over the model axis.
  specs = {str(s.spec) for s in jax.tree.leaves(runner_two.state_sharding)}
  assert any("model" in s for s in specs)
  for a, b in zip(one, two):
    np.testing.assert_allclose([b["loss"], b["kd"]], [a["loss"], a["kd"]], rtol=1e-4)


# End to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_hf_distill_config_end_to_end_and_transformers_loads_the_student(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  env = {**os.environ, "PYTHONPATH": REPO}
  models_dir, workdir = tmp_path / "hf", tmp_path / "w"
  subprocess.run([sys.executable, "examples/make_hf_teacher.py", "--out", str(models_dir),
                  "--steps", "20"], cwd=REPO, env=env, check=True, capture_output=True)
  done = subprocess.run(
      [sys.executable, "-m", "kdjax.main", f"--config=configs/lm/hf_distill.py:{models_dir}",
       f"--workdir={workdir}", "--config.total_steps=4", "--config.optimizer.warmup_steps=1",
       "--config.eval_every=0", "--config.progress_bar=False"],
      cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {"teacher", "student", "student_kd", "export"}
  assert results["teacher"]["model"] == "llama"
  (member,) = results["export"]["members"]
  assert member["format"] == "hf" and member["max_abs_diff"] == 0.0
  exported = workdir / "export" / "student_kd_hf"
  assert (exported / "tokenizer.json").exists()
  # transformers loads the distilled student to kdjax's logits.
  tokens = np.array([[5, 17, 300, 2, 44, 9, 120, 7]], np.int32)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(exported),
                                                               torch_dtype=torch.float32)
  with torch.no_grad():
    want = hf_model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  student = models.from_hf(str(exported))
  got, _ = student.apply(student.params, student.model_state, jnp.asarray(tokens), train=False,
                         rng=None)
  np.testing.assert_allclose(np.asarray(got.logits), want, rtol=1e-4, atol=1e-4)
  # It is the trained student_kd, not the initialisation it started from.
  init = models.from_hf(str(models_dir / "student"))
  start, _ = init.apply(init.params, init.model_state, jnp.asarray(tokens), train=False, rng=None)
  assert not np.allclose(np.asarray(start.logits), want, atol=1e-3)

"""On-policy distillation (GKD): data, student and teacher continuations, the loss mask, keys."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from kdjax import lm, models, step as step_lib
from kdjax.models import Model, Outputs
from kdjax.models.zoo import DecoderConfig

V, P, N, B = 64, 8, 8, 4
L = P + N - 1
BETA = 0.5
LR = 0.1
STUDENT = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8)
TEACHER = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=4, head_dim=8, family="qwen2", qkv_bias=True)


def _sharpened(config, seed):
  # Larger weights than the default init, so samples and logits are far from uniform.
  m = models.decoder_model(config, rng=jax.random.key(seed))
  params = jax.tree.map(lambda p: p * 6.0 if p.ndim == 2 else p, m.params)
  return models.decoder_model(config, params=params, name=f"decoder{seed}")


@pytest.fixture(scope="module")
def student():
  return _sharpened(STUDENT, 0)


@pytest.fixture(scope="module")
def teacher():
  return _sharpened(TEACHER, 1)


def _batch():
  rows = np.random.default_rng(0).integers(1, V, (B, L + 1)).astype(np.int32)
  mask = np.ones((B, L), bool)
  mask[3, -2:] = False  # padding at the end of the last row
  return {"tokens": rows[:, :-1], "targets": rows[:, 1:], "mask": mask}


def _state(student, teacher, beta=BETA):
  batch = _batch()
  return step_lib.DistillState.create(
      student=student, teacher=teacher, objective=lm.generalized_jsd_term(beta),
      tx=optax.sgd(LR), rng=jax.random.key(7), example_batch=batch, input_key="tokens",
      label_key="targets")


def _step(config):
  return jax.jit(functools.partial(lm.on_policy_step, config=config))


# The loss written out independently of kdjax.losses: float64 numpy, and jnp for its gradient.


def _np_gjsd(s_logits, t_logits, mask, beta):
  def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  ls, lt = log_softmax(s_logits), log_softmax(t_logits)
  ps, pt = np.exp(ls), np.exp(lt)
  if beta == 0:  # forward KL(teacher || student)
    per_token = (pt * (lt - ls)).sum(-1)
  elif beta == 1:  # reverse KL(student || teacher)
    per_token = (ps * (ls - lt)).sum(-1)
  else:
    m = beta * pt + (1 - beta) * ps
    per_token = (beta * (pt * (lt - np.log(m))).sum(-1)
                 + (1 - beta) * (ps * (ls - np.log(m))).sum(-1))
  mask = np.asarray(mask, np.float64)
  return (per_token * mask).sum() / mask.sum()


def _jnp_gjsd(s_logits, t_logits, mask, beta):
  ls, lt = jax.nn.log_softmax(s_logits), jax.nn.log_softmax(t_logits)
  ps, pt = jnp.exp(ls), jnp.exp(lt)
  log_m = jnp.log(beta * pt + (1 - beta) * ps)
  per_token = beta * jnp.sum(pt * (lt - log_m), -1) + (1 - beta) * jnp.sum(ps * (ls - log_m), -1)
  m = mask.astype(jnp.float32)
  return jnp.sum(per_token * m) / jnp.sum(m)


def _logits(model, params, tokens):
  out, _ = model.apply(params, model.model_state, jnp.asarray(tokens), train=False, rng=None)
  return out.logits


def _continuation_mask(mask):
  keep = np.array(mask, bool)
  keep[:, :P - 1] = False
  return keep


def test_lambda_zero_is_token_level_gjsd_on_the_data_continuations(student, teacher):
  state, batch = _state(student, teacher), _batch()
  new_state, metrics = _step(lm.OnPolicyConfig(P, N, lmbda=0.0))(state, batch)

  keep = _continuation_mask(batch["mask"])
  s_logits = _logits(student, student.params, batch["tokens"])
  t_logits = _logits(teacher, teacher.params, batch["tokens"])
  np.testing.assert_allclose(float(metrics["loss"]),
                             _np_gjsd(s_logits, t_logits, keep, BETA), rtol=1e-5)
  assert float(metrics["on_policy_fraction"]) == 0.0
  assert float(metrics["generation_length"]) == 0.0

  # The update is plain SGD on the hand-written loss of the data continuations.
  def loss(params):
    return _jnp_gjsd(_logits(student, params, batch["tokens"]), t_logits, jnp.asarray(keep),
                     BETA)

  grads = jax.grad(loss)(student.params)
  expected = jax.tree.map(lambda p, g: p - LR * g, student.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state.params["student"], expected)


@pytest.fixture(scope="module")
def sampled(student, teacher):
  """A lambda = 1 state and config, with the batch of its first step."""
  state, config = _state(student, teacher), lm.OnPolicyConfig(P, N, lmbda=1.0, temperature=0.7)
  new_batch, drawn = lm.on_policy_batch(state, _batch(), config)
  return state, config, new_batch, drawn


@pytest.fixture(scope="module")
def gkd_step():
  return _step(lm.OnPolicyConfig(P, N, lmbda=0.5, temperature=0.7))


def test_lambda_one_scores_what_generate_samples_with_the_states_key(student, sampled):
  state, config, new_batch, drawn = sampled
  _, sample_key = lm.on_policy_keys(state)
  expected = lm.generate(student, state.params["student"], _batch()["tokens"][:, :P],
                         max_new_tokens=N, key=sample_key, temperature=0.7)
  scored = np.concatenate([new_batch["tokens"], new_batch["targets"][:, -1:]], axis=1)
  np.testing.assert_array_equal(scored, expected)
  assert not np.array_equal(np.asarray(expected)[:, P:], _batch()["targets"][:, P - 1:])
  # Every continuation target of every row is scored (no EOS): padding at the end of the
  # last data row does not mask the student's own tokens.
  np.testing.assert_array_equal(new_batch["mask"], _continuation_mask(np.ones((B, L), bool)))
  assert float(drawn["on_policy_fraction"]) == 1.0
  assert float(drawn["generation_length"]) == N


def test_a_student_step_trains_on_the_students_samples(student, teacher, gkd_step):
  # The documented draw: u ~ U[0, 1) from the choice key; u < lmbda samples from the student.
  start = _state(student, teacher)
  draws = [float(jax.random.uniform(lm.on_policy_keys(start.replace(step=jnp.int32(i)))[0], ()))
           for i in range(20)]
  i = next(i for i, u in enumerate(draws) if u < 0.5)
  state = start.replace(step=jnp.int32(i))
  config = lm.OnPolicyConfig(P, N, lmbda=1.0, temperature=0.7)  # the same samples, surely drawn
  new_batch, _ = lm.on_policy_batch(state, _batch(), config)
  _, metrics = gkd_step(state, _batch())
  assert float(metrics["on_policy_fraction"]) == 1.0
  t_logits = _logits(teacher, teacher.params, new_batch["tokens"])
  s_logits = _logits(student, student.params, new_batch["tokens"])
  np.testing.assert_allclose(float(metrics["loss"]),
                             _np_gjsd(s_logits, t_logits, new_batch["mask"], BETA), rtol=1e-5)


def test_the_loss_ignores_the_prompt_tokens(student, teacher, sampled):
  state, _, new_batch, _ = sampled
  s_out = Outputs(_logits(student, student.params, new_batch["tokens"]))
  t_logits = _logits(teacher, teacher.params, new_batch["tokens"])
  noise = 5.0 * jax.random.normal(jax.random.key(3), t_logits.shape)
  position = jnp.arange(L)[None, :, None]

  def loss(where):
    t_out = Outputs(jnp.where(where, t_logits + noise, t_logits))
    return float(state.objective.apply(state.params["objective"], state.objective_state, s_out,
                                       t_out, new_batch, state.step)[0])

  assert loss(position < P - 1) == loss(position < 0)
  assert abs(loss(position == P) - loss(position < 0)) > 1e-3


def test_eos_ends_the_scored_continuation(student, sampled):
  state, _, new_batch, _ = sampled
  continuation = np.asarray(new_batch["targets"][:, P - 1:])
  eos = int(continuation[0, 2])
  config = lm.OnPolicyConfig(P, N, lmbda=1.0, temperature=0.7, eos_id=eos, pad_id=0)
  ended, drawn = lm.on_policy_batch(state, _batch(), config)
  lengths = []
  for row, ref, keep in zip(np.asarray(ended["targets"][:, P - 1:]), continuation,
                            np.asarray(ended["mask"][:, P - 1:])):
    hits = np.flatnonzero(ref == eos)
    stop = hits[0] + 1 if hits.size else N
    np.testing.assert_array_equal(row[:stop], ref[:stop])
    np.testing.assert_array_equal(keep, np.arange(N) < stop)
    assert np.all(row[stop:] == 0)
    lengths.append(stop)
  assert lengths[0] == 3
  np.testing.assert_allclose(float(drawn["generation_length"]), np.mean(lengths), rtol=1e-6)
  assert not np.asarray(ended["mask"][:, :P - 1]).any()


def _wrapped(model):
  """The same model behind a plain function (not a kdjax decoder)."""
  return Model(apply=lambda *a, **k: model.apply(*a, **k), params=model.params,
               model_state=model.model_state, name="wrapped")


def test_the_key_lives_in_the_state_and_a_resumed_run_repeats(student, teacher, gkd_step):
  step, batch = gkd_step, _batch()

  def run(state, steps):
    trace = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      trace.append({k: float(v) for k, v in metrics.items()})
    return state, trace

  start = _state(student, teacher)
  end_a, trace_a = run(start, 6)
  end_b, trace_b = run(start, 6)
  assert trace_a == trace_b
  assert {t["on_policy_fraction"] for t in trace_a} == {0.0, 1.0}  # both sources were drawn
  # Stop after 3 steps, keep only the checkpointed fields on the host, resume.
  half, trace_c = run(start, 3)
  restored = start.from_checkpoint_tree(jax.device_get(half.checkpoint_tree()))
  end_c, trace_d = run(restored, 3)
  assert trace_c + trace_d == trace_a
  for a, b, c in zip(jax.tree.leaves(end_a.params), jax.tree.leaves(end_b.params),
                     jax.tree.leaves(end_c.params)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_loss_gradient_matches_finite_differences(beta):
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  batch = {"mask": jnp.asarray(np.arange(5)[None, :] >= np.array([[2], [1]]))}
  term = lm.generalized_jsd_term(beta, temperature=1.5)

  def loss(student_logits):
    return term.apply({}, {}, Outputs(student_logits), Outputs(t), batch, 0)[0]

  check_grads(loss, (s,), order=1, modes=("rev",), atol=2e-3, rtol=2e-3)
  np.testing.assert_allclose(float(loss(s)),
                             _np_gjsd(s / 1.5, t / 1.5, batch["mask"], beta), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"lmbda": 1.5}, "lmbda=1.5 must be a probability"),
    ({"lmbda": 0.7, "seq_kd_prob": 0.5}, "exceeds 1"),
    ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
    ({"eos_id": -1}, "eos_id=-1"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message):
    lm.OnPolicyConfig(P, N, **kwargs)


def test_a_step_that_cannot_sample_says_what_to_change(student, teacher):
  state = _state(student, teacher)
  with pytest.raises(ValueError, match="exceeds the rows' length 15"):
    lm.on_policy_batch(state, _batch(), lm.OnPolicyConfig(P, N + 1, lmbda=0.0))
  with pytest.raises(ValueError, match="lmbda=1.0 samples from the student.*decoder_model"):
    lm.on_policy_batch(_state(_wrapped(student), teacher), _batch(),
                       lm.OnPolicyConfig(P, N, lmbda=1.0))
  with pytest.raises(ValueError, match="seq_kd_prob=0.5 samples from the teacher"):
    lm.on_policy_batch(_state(student, _wrapped(teacher)), _batch(),
                       lm.OnPolicyConfig(P, N, lmbda=0.0, seq_kd_prob=0.5))


def test_teacher_generated_continuations(teacher, student):
  state = _state(student, teacher)
  config = lm.OnPolicyConfig(P, N, lmbda=0.0, seq_kd_prob=1.0, temperature=0.7)
  new_batch, drawn = lm.on_policy_batch(state, _batch(), config)
  _, sample_key = lm.on_policy_keys(state)
  expected = lm.generate(teacher, teacher.params, _batch()["tokens"][:, :P], max_new_tokens=N,
                         key=sample_key, temperature=0.7)
  np.testing.assert_array_equal(new_batch["targets"], np.asarray(expected)[:, 1:])
  assert float(drawn["teacher_generated_fraction"]) == 1.0
  assert float(drawn["on_policy_fraction"]) == 0.0


def test_the_run_kind_turns_its_fields_into_settings():
  from kdjax.train import kinds
  from kdjax.train.errors import ConfigError
  from kdjax.train.kinds import on_policy

  def decl(**fields):
    return kinds.declare({"name": "gkd", "kind": "on_policy", "teachers": ("teacher",),
                          **fields})

  config = on_policy.settings(decl(prompt_length=4, lmbda=1.0, top_p=0.9), 32)
  assert config == lm.OnPolicyConfig(4, 29, lmbda=1.0, top_p=0.9)
  with pytest.raises(ConfigError, match="prompt_length=30 and max_new_tokens=8 do not fit rows "
                                        "of config.data.sequence_length=32"):
    on_policy.settings(decl(prompt_length=30, max_new_tokens=8), 32)
  with pytest.raises(ConfigError, match=r"run 'gkd' \(kind 'on_policy'\): lmbda=2.0 must be"):
    on_policy.settings(decl(lmbda=2.0), 32)
  with pytest.raises(ConfigError, match="has no field"):
    decl(lambda_=0.5)


@pytest.mark.slow
def test_a_killed_gkd_run_resumes_to_the_same_final_metrics(tmp_path):
  import json
  import os

  from tests.train.conftest import kill_when, run_cli

  args = ("--config=configs/lm/gkd.py", "--config.teacher.total_steps=30",
          "--config.total_steps=30", "--config.checkpoint_every=10", "--config.log_every=1",
          "--config.eval_every=30", "--config.progress_bar=False")
  reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  run_cli(*args, f"--workdir={reference}")
  kill_when(os.path.join(killed, "student_gkd", "checkpoints", "20"), *args,
            f"--workdir={killed}")
  run_cli(*args, f"--workdir={killed}")

  def final(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
      entry = json.load(f)["student_gkd"]
    records = {}
    with open(os.path.join(workdir, "student_gkd", "metrics.jsonl")) as f:
      for line in f:
        r = json.loads(line)
        if not r.get("eval"):
          records[r["step"]] = {k: v for k, v in r.items() if not k.endswith("_per_s")}
    return {k: v for k, v in entry.items() if k != "time_s"}, records

  (ref_entry, ref_records), (entry, records) = final(reference), final(killed)
  assert entry == ref_entry
  assert records == ref_records
  assert sorted(records) == list(range(1, 31))
  assert any(r["on_policy_fraction"] > 0 for r in records.values())
  assert all(r["generation_length"] in (0.0, 32.0) for r in records.values())

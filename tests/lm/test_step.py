"""Language-model distillation through the ordinary ``distill_step``: padding, caches, data."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import lm
from kdjax import models
from kdjax import objectives

VOCAB, LENGTH, BATCH = 11, 6, 4
ATTN = "blocks_{}/attn_probs"


def tiny_lm(seed, d_model, n_layers, taps=(), dropout=0.0):
  return models.create("transformer_lm", num_classes=VOCAB, input_shape=(LENGTH,),
                       rng=jax.random.key(seed), taps=taps, vocab_size=VOCAB, d_model=d_model,
                       n_layers=n_layers, n_heads=2, max_len=LENGTH, dropout_rate=dropout)


@pytest.fixture(scope="module")
def teacher():
  return tiny_lm(0, 16, 2, taps=("blocks_0", "blocks_1", "blocks_0/attn_probs",
                                 "blocks_1/attn_probs"))


def lm_batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (BATCH, LENGTH + 1)).astype(np.int32)
  mask = np.ones((BATCH, LENGTH), bool)
  mask[1, 4:] = False  # right padding, as a causal LM wants it
  mask[3, 2:] = False
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def test_distill_step_is_blind_to_padding(teacher):
  layer_map = lm.uniform_layer_map(1, 2)
  student = tiny_lm(1, 8, 1, taps=("blocks_0", "blocks_0/attn_probs"), dropout=0.1)
  objective = objectives.combine({
      "ce": (lm.token_cross_entropy_term(), 0.5),
      "kd": (lm.token_kd_term(2.0), 0.5),
      "attn": (lm.attention_kl_term(ATTN, ATTN, layer_map=layer_map), 1.0),
      "hidden": (lm.hidden_mse_term("blocks_{}", "blocks_{}", adapter="linear",
                                    layer_map=layer_map), 1.0),
  })
  batch = lm_batch()
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.adam(1e-2), rng=jax.random.key(0),
                                    example_batch=batch, input_key="tokens", label_key="targets")
  step = jax.jit(kdjax.distill_step)
  new_state, metrics = step(state, batch)

  # Rewrite every padded position: its targets (even to invalid ids) and its input tokens, which
  # under the causal mask only later, also padded, positions can see.
  other = {k: v.copy() for k, v in batch.items()}
  other["targets"][~batch["mask"]] = -1
  other["tokens"][~batch["mask"]] = (batch["tokens"][~batch["mask"]] + 3) % VOCAB
  other_state, other_metrics = step(state, other)

  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
  assert {"ce", "kd", "attn", "hidden", "accuracy", "agreement", "ce/perplexity"} <= set(metrics)
  for key in metrics:
    np.testing.assert_allclose(other_metrics[key], metrics[key], rtol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               other_state.params, new_state.params)
  # The padding is really there: the same rewrite at real positions changes the loss.
  changed = {k: v.copy() for k, v in batch.items()}
  changed["targets"][0, 0] = (batch["targets"][0, 0] + 1) % VOCAB
  assert step(state, changed)[1]["ce"] != metrics["ce"]
  # The adapter trains with the student.
  assert not np.allclose(new_state.params["objective"]["hidden"]["adapter_0"]["out"]["kernel"],
                         state.params["objective"]["hidden"]["adapter_0"]["out"]["kernel"])


@pytest.mark.parametrize("mode", ["renormalize", "remainder"])
def test_cached_top_k_gives_the_online_loss(teacher, mode, tmp_path):
  data = lm.sequence_windows(np.random.default_rng(1).integers(0, VOCAB, 40), LENGTH, stride=3)
  data["mask"][-1, 3:] = False
  k, temperature = 4, 2.0
  cache = lm.TeacherCache.build(teacher, data["tokens"], k, mode=mode, temperature=temperature,
                                batch_size=5)  # 12 rows: the last chunk is padded
  assert cache.values.shape == (len(data["tokens"]), LENGTH, k)
  path = tmp_path / "cache.npz"
  cache.save(path)
  with pytest.raises(FileExistsError):
    cache.save(path)
  cache = lm.TeacherCache.load(path)
  # Raw logits (renormalize) serve any temperature; log-probabilities only their own.
  assert cache.mode == mode and cache.temperature == (temperature if mode == "remainder" else 1.0)

  batch = next(lm.batches(cache.attach(data), 8, seed=3))
  student = tiny_lm(2, 8, 1)
  s_out, _ = student.apply(student.params, {}, batch["tokens"], train=False, rng=None)
  t_out, _ = teacher.apply(teacher.params, {}, batch["tokens"], train=False, rng=None)
  online = lm.sparse_kd_term(k, mode=mode, temperature=temperature)
  cached = cache.term(temperature=temperature)
  step = jnp.int32(0)
  online_loss = online.apply({}, {}, s_out, t_out, batch, step)[0]
  cached_loss = cached.apply({}, {}, s_out, None, batch, step)[0]
  np.testing.assert_allclose(cached_loss, online_loss, rtol=1e-5)
  if mode == "remainder":
    with pytest.raises(ValueError, match="temperature"):
      cache.term(temperature=1.0)
    return

  # Through the step: a teacher-free state on cached batches takes the online state's update.
  tx = optax.sgd(0.5)
  make = lambda t, term: kdjax.DistillState.create(  # noqa: E731
      student=student, teacher=t, objective=term, tx=tx, rng=jax.random.key(0),
      example_batch=batch, input_key="tokens", label_key="targets")
  online_state, online_metrics = jax.jit(kdjax.distill_step)(make(teacher, online), batch)
  cached_state, cached_metrics = jax.jit(kdjax.distill_step)(make(None, cached), batch)
  np.testing.assert_allclose(cached_metrics["loss"], online_metrics["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               cached_state.params, online_state.params)
  assert "agreement" not in cached_metrics  # no teacher ran


def test_perplexity_is_exp_of_the_masked_mean_nll(teacher):
  data = lm.sequence_windows(np.random.default_rng(2).integers(0, VOCAB, 60), LENGTH, stride=4)
  data["mask"][0, 2:] = False
  got = lm.perplexity(teacher, data, batch_size=4)  # 14 rows: the last batch is padded
  out, _ = teacher.apply(teacher.params, {}, data["tokens"], train=False, rng=None)
  logits = np.asarray(out.logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = log_z - np.take_along_axis(logits, data["targets"][..., None], -1)[..., 0]
  expected = np.exp(np.sum(nll * data["mask"]) / data["mask"].sum())
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_windows_and_batches():
  stream = np.arange(23, dtype=np.int64)
  data = lm.sequence_windows(stream, 5)
  np.testing.assert_array_equal(data["tokens"][1], [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(data["targets"][1], [6, 7, 8, 9, 10])
  assert data["tokens"].shape == (4, 5) and data["tokens"].dtype == np.int32
  first = [b["tokens"][:, 0] for b in lm.batches(data, 3, seed=1, epochs=2)]
  again = [b["tokens"][:, 0] for b in lm.batches(data, 3, seed=1, epochs=2)]
  assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, again))
  padded = list(lm.batches(data, 3, shuffle=False, epochs=1, drop_remainder=False))
  assert [b["tokens"].shape for b in padded] == [(3, 5), (3, 5)]
  np.testing.assert_array_equal(padded[1]["mask"].any(-1), [True, False, False])
  assert data["mask"].all()  # the dataset itself is untouched

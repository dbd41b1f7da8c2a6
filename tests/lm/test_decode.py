"""Greedy and beam-search decoding on a tiny causal LM, and sequence-level KD data."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import lm
from kdjax import models

VOCAB, MAX_LEN = 5, 8


@pytest.fixture(scope="module")
def model():
  m = models.create("transformer_lm", num_classes=VOCAB, input_shape=(MAX_LEN,),
                    rng=jax.random.key(3), vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2,
                    max_len=MAX_LEN, dropout_rate=0.0)
  # Sharper next-token distributions than at initialisation, so greedy choices are clear-cut.
  params = jax.tree.map(lambda x: 4.0 * x, m.params)
  return models.Model(apply=m.apply, params=params, model_state=m.model_state)


PROMPTS = np.array([[1, 2, 3], [4, 0, 2]], np.int32)
P = PROMPTS.shape[1]
# Shared compilations: one per distinct (model, static arguments).
greedy = jax.jit(lm.greedy_decode, static_argnums=(0, 4), static_argnames=("eos_id", "pad_id"))
beam_search = jax.jit(lm.beam_search, static_argnums=(0, 4, 5),
                      static_argnames=("eos_id", "pad_id", "length_penalty"))


@functools.partial(jax.jit, static_argnums=0)
def _last_log_probs(apply, params, model_state, prefix):
  out, _ = apply(params, model_state, prefix, train=False, rng=None)
  return jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32))


def log_probs_of_prefix(model, prefix):
  """Next-token log-probabilities after ``prefix`` ([B, n]), from a forward of exactly that."""
  return np.asarray(_last_log_probs(model.apply, model.params, model.model_state,
                                    jnp.asarray(prefix, jnp.int32)), np.float64)


@pytest.fixture(scope="module")
def eos(model):
  """A token the model really generates: the first greedy token after prompt 0."""
  return int(greedy(model, model.params, model.model_state, PROMPTS, 4)[0, P])


def test_greedy_matches_a_step_by_step_reference(model):
  new = 4
  got = np.asarray(greedy(model, model.params, model.model_state, PROMPTS, new))
  seq = PROMPTS.copy()
  for _ in range(new):
    seq = np.concatenate([seq, log_probs_of_prefix(model, seq).argmax(-1)[:, None]], 1)
  np.testing.assert_array_equal(got, seq)
  assert got.dtype == np.int32 and got.shape == (2, P + new)


def test_greedy_pads_after_eos(model, eos):
  free = np.asarray(greedy(model, model.params, model.model_state, PROMPTS, 4))
  got = np.asarray(greedy(model, model.params, model.model_state, PROMPTS, 4, eos_id=eos,
                          pad_id=VOCAB - 1))
  np.testing.assert_array_equal(got[0, :P + 1], free[0, :P + 1])
  np.testing.assert_array_equal(got[0, P + 1:], VOCAB - 1)
  if eos in free[1, P:]:
    stop = P + int(np.argmax(free[1, P:] == eos)) + 1
    np.testing.assert_array_equal(got[1, :stop], free[1, :stop])
    np.testing.assert_array_equal(got[1, stop:], VOCAB - 1)
  else:
    np.testing.assert_array_equal(got[1], free[1])


@pytest.mark.parametrize("use_eos", [False, True])
def test_beam_size_one_is_greedy(model, eos, use_eos):
  eos_id = eos if use_eos else None
  expected = greedy(model, model.params, model.model_state, PROMPTS, 4, eos_id=eos_id)
  beams, scores = beam_search(model, model.params, model.model_state, PROMPTS, 4, 1,
                              eos_id=eos_id)
  assert beams.shape == (2, 1, P + 4) and scores.shape == (2, 1)
  np.testing.assert_array_equal(beams[:, 0], expected)


def test_wide_beam_finds_the_exact_best_continuation(model):
  # With beam_size = vocab, two steps of beam search enumerate every two-token continuation.
  beams, scores = beam_search(model, model.params, model.model_state, PROMPTS, 2, VOCAB)
  for b in range(len(PROMPTS)):
    first = log_probs_of_prefix(model, PROMPTS[b:b + 1])[0]
    prefixes = np.concatenate([np.repeat(PROMPTS[b:b + 1], VOCAB, 0),
                               np.arange(VOCAB)[:, None]], 1)
    second = log_probs_of_prefix(model, prefixes)  # [y1, y2]
    totals = {(y1, y2): first[y1] + second[y1, y2]
              for y1, y2 in itertools.product(range(VOCAB), repeat=2)}
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    np.testing.assert_array_equal(beams[b, 0, -2:], ranked[0][0])
    np.testing.assert_array_equal(beams[b, :, :P], np.broadcast_to(PROMPTS[b], (VOCAB, P)))
    # Scores are length-normalised (2 tokens) and sorted, best first.
    np.testing.assert_allclose(scores[b], [v / 2 for _, v in ranked[:VOCAB]], rtol=1e-4)


def test_sequence_kd_dataset_trains_on_the_teachers_continuation(model):
  new = 4
  data = lm.sequence_kd_dataset(model, PROMPTS, new, batch_size=3)
  seq = np.asarray(greedy(model, model.params, model.model_state, PROMPTS, new))
  np.testing.assert_array_equal(data["tokens"], seq[:, :-1])
  np.testing.assert_array_equal(data["targets"], seq[:, 1:])
  expected_mask = np.zeros((2, P + new - 1), bool)
  expected_mask[:, P - 1:] = True  # the targets the teacher generated
  np.testing.assert_array_equal(data["mask"], expected_mask)


def test_sequence_kd_dataset_with_beams_masks_after_eos(model, eos):
  new = 4
  data = lm.sequence_kd_dataset(model, PROMPTS, new, eos_id=eos, beam_size=2, prompt_loss=True)
  beams, _ = beam_search(model, model.params, model.model_state, PROMPTS, new, 2, eos_id=eos)
  np.testing.assert_array_equal(data["targets"], np.asarray(beams[:, 0, 1:]))
  for b in range(2):
    gen = np.asarray(beams[b, 0, P:])
    stop = int(np.argmax(gen == eos)) + 1 if eos in gen else new
    np.testing.assert_array_equal(data["mask"][b, P - 1:], np.arange(new) < stop)
    assert data["mask"][b, :P - 1].all()  # prompt_loss keeps the prompt's own targets
  assert not data["mask"].all()  # prompt 0 stops at its first token


def test_decode_refuses_bad_shapes(model):
  with pytest.raises(ValueError, match="prompt_tokens"):
    lm.greedy_decode(model, model.params, model.model_state, PROMPTS[0], 2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    lm.greedy_decode(model, model.params, model.model_state, PROMPTS, 0)
  with pytest.raises(ValueError, match="beam_size"):
    lm.beam_search(model, model.params, model.model_state, PROMPTS, 2, VOCAB + 1)

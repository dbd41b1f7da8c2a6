"""Key-value-cache decoding against the full-forward decoder, padding, EOS and sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import lm, models
from kdjax.models.zoo import DecoderConfig

V = 40
CONFIG = DecoderConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8, sliding_window=4,
                       layer_types=("sliding", "full"), attn_softcap=30.0, qk_norm=True,
                       family="qwen3")


@pytest.fixture(scope="module")
def model():
  # Larger weights than the default init, so greedy decoding does not repeat one token.
  m = models.decoder_model(CONFIG, rng=jax.random.key(0))
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, m.params)
  return models.decoder_model(CONFIG, params=params)


PROMPTS = np.random.default_rng(0).integers(1, V, (3, 5)).astype(np.int32)


def test_greedy_with_the_cache_equals_the_full_forward_decoder(model):
  full = lm.greedy_decode(model, model.params, {}, jnp.asarray(PROMPTS), 8)
  cached = lm.generate(model, model.params, PROMPTS, max_new_tokens=8)
  np.testing.assert_array_equal(cached, full)
  assert len(np.unique(np.asarray(full)[:, 5:])) > 2


def test_left_padded_prompts_decode_as_they_would_alone(model):
  lengths = np.array([5, 2, 2], np.int32)
  padded = PROMPTS.copy()
  alone = {5: lm.generate(model, model.params, PROMPTS, max_new_tokens=8)}
  alone[2] = lm.generate(model, model.params, PROMPTS[:, 3:], max_new_tokens=8)
  for b, n in enumerate(lengths):
    padded[b, :5 - n] = 0
  batch = lm.generate(model, model.params, padded, lengths, max_new_tokens=8)
  for b, n in enumerate(lengths):
    np.testing.assert_array_equal(batch[b, 5:], alone[int(n)][b, n:])
    np.testing.assert_array_equal(batch[b, :5], padded[b])


def test_eos_ends_a_row_with_padding(model):
  out = np.asarray(lm.generate(model, model.params, PROMPTS, max_new_tokens=8))
  eos = int(out[0, 7])  # the third generated token of row 0
  ended = np.asarray(lm.generate(model, model.params, PROMPTS, max_new_tokens=8, eos_id=eos,
                                 pad_id=-1))
  for row, ref in zip(ended, out):
    gen, ref_gen = row[5:], ref[5:]
    hits = np.flatnonzero(ref_gen == eos)
    if hits.size:
      stop = hits[0] + 1
      np.testing.assert_array_equal(gen[:stop], ref_gen[:stop])
      assert np.all(gen[stop:] == -1)
    else:
      np.testing.assert_array_equal(gen, ref_gen)


def test_sampling_is_keyed_and_top_k_one_is_greedy(model):
  greedy = lm.generate(model, model.params, PROMPTS, max_new_tokens=8)
  k1 = lm.generate(model, model.params, PROMPTS, max_new_tokens=8, key=jax.random.key(3),
                   top_k=1)
  np.testing.assert_array_equal(k1, greedy)
  tiny_p = lm.generate(model, model.params, PROMPTS, max_new_tokens=8, key=jax.random.key(3),
                       top_p=1e-6)
  np.testing.assert_array_equal(tiny_p, greedy)
  a = lm.generate(model, model.params, PROMPTS, max_new_tokens=8, key=jax.random.key(1),
                  temperature=3.0)
  b = lm.generate(model, model.params, PROMPTS, max_new_tokens=8, key=jax.random.key(1),
                  temperature=3.0)
  c = lm.generate(model, model.params, PROMPTS, max_new_tokens=8, key=jax.random.key(2),
                  temperature=3.0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_sample_logits_follows_the_filtered_distribution():
  logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.vmap(lambda k, **kw: lm.sample_logits(logits, k, **kw)[0])
  freq = lambda x: np.bincount(np.asarray(x), minlength=4) / len(x)  # noqa: E731
  np.testing.assert_allclose(freq(draw(keys)), [0.5, 0.25, 0.15, 0.1], atol=0.03)
  np.testing.assert_allclose(freq(jax.vmap(lambda k: lm.sample_logits(logits, k, top_k=2)[0])(
      keys)), [2 / 3, 1 / 3, 0, 0], atol=0.03)
  # top_p=0.7: 0.5 alone is short of 0.7, so {0.5, 0.25} is the nucleus.
  np.testing.assert_allclose(freq(jax.vmap(lambda k: lm.sample_logits(logits, k, top_p=0.7)[0])(
      keys)), [2 / 3, 1 / 3, 0, 0], atol=0.03)
  hot = jnp.exp(jnp.log(jnp.asarray([0.5, 0.25, 0.15, 0.1])) / 2.0)
  np.testing.assert_allclose(freq(jax.vmap(
      lambda k: lm.sample_logits(logits, k, temperature=2.0)[0])(keys)), hot / hot.sum(),
      atol=0.03)


def test_bad_arguments_name_the_fix(model):
  with pytest.raises(ValueError, match="max_new_tokens"):
    lm.generate(model, model.params, PROMPTS, max_new_tokens=0)
  with pytest.raises(ValueError, match="top_p"):
    lm.generate(model, model.params, PROMPTS, max_new_tokens=2, key=jax.random.key(0), top_p=0)
  with pytest.raises(TypeError, match="greedy_decode"):
    other = models.create("transformer_lm", num_classes=V, input_shape=(8,),
                          rng=jax.random.key(0), vocab_size=V, d_model=8, n_layers=1,
                          n_heads=2, max_len=8)
    lm.generate(other, other.params, PROMPTS, max_new_tokens=2)

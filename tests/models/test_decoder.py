"""The zoo's decoder on its own: packing, sliding windows, taps, config checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models
from kdjax.models.zoo import DecoderConfig

GEMMA_LIKE = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8, norm_plus_one=True,
                           activation="gelu_tanh", tie_embeddings=True, qk_norm=True,
                           embed_scale=True, sandwich_norms=True, attn_softcap=20.0,
                           final_softcap=10.0, sliding_window=3, layer_types=("sliding", "full"),
                           query_pre_attn_scalar=6.0, local_rope_theta=100.0, family="gemma3_text")


@pytest.fixture(scope="module")
def model():
  return models.decoder_model(GEMMA_LIKE, rng=jax.random.key(0),
                              taps=("blocks_0", "blocks_0/attn_probs", "pre_logits", "head"))


def _apply(model, inputs):
  out, _ = jax.jit(model.apply, static_argnames="train")(model.params, {}, inputs, train=False)
  return out


def test_packed_segments_never_attend_across(model):
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 50, 5), rng.integers(0, 50, 4)
  packed = {"tokens": jnp.asarray(np.concatenate([a, b, [0]])[None], jnp.int32),
            "segment_ids": jnp.asarray([[1] * 5 + [2] * 4 + [0]], jnp.int32),
            "positions": jnp.asarray([list(range(5)) + list(range(4)) + [0]], jnp.int32)}
  out = _apply(model, packed).logits
  alone_a = _apply(model, jnp.asarray(a[None], jnp.int32)).logits
  alone_b = _apply(model, jnp.asarray(b[None], jnp.int32)).logits
  np.testing.assert_allclose(out[0, :5], alone_a[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0, 5:9], alone_b[0], rtol=1e-5, atol=1e-5)


def test_taps_sliding_window_and_head(model):
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 7)), jnp.int32)
  out = _apply(model, tokens)
  probs = out.features["blocks_0/attn_probs"]
  assert probs.shape == (2, 4, 7, 7) and out.features["blocks_0"].shape == (2, 7, 16)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  q, k = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
  outside = (k > q) | (k <= q - 3)  # layer 0 is sliding with window 3
  assert np.all(np.asarray(probs)[:, :, outside] == 0)
  assert np.all(np.asarray(probs)[:, :, ~outside] > 0)
  head = out.features["head"]
  assert head.shape == (16, 50)
  logits = jnp.tanh(out.features["pre_logits"] @ head / 10.0) * 10.0
  np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_gives_float32_logits():
  model = models.decoder_model(GEMMA_LIKE, rng=jax.random.key(0), dtype=jnp.bfloat16)
  out = _apply(model, jnp.zeros((1, 4), jnp.int32))
  assert out.logits.dtype == jnp.float32 and jnp.all(jnp.isfinite(out.logits))


def test_config_errors_name_the_setting():
  base = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=4)
  with pytest.raises(ValueError, match="num_kv_heads"):
    DecoderConfig(**{**base, "num_kv_heads": 3})
  with pytest.raises(ValueError, match="sliding_window"):
    DecoderConfig(**base, layer_types=("sliding", "full"))
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    DecoderConfig(**base, rope_scaling={"rope_type": "yarn", "factor": 2.0})
  model = models.decoder_model(DecoderConfig(**base), rng=jax.random.key(0))
  with pytest.raises(ValueError, match="segment_ids has shape"):
    _apply(model, {"tokens": jnp.zeros((1, 4), jnp.int32),
                   "segment_ids": jnp.zeros((1, 3), jnp.int32)})
  with pytest.raises(TypeError, match="not a kdjax decoder"):
    models.decoder_module(models.create("mlp", num_classes=3, input_shape=(4,),
                                        rng=jax.random.key(0)))

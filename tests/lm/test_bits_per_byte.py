"""Bits per byte in evaluation: the summed NLL of the evaluated targets over the bytes they
spell, checked against numpy on a tiny bigram model, for byte-level and BPE tokens."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import lm, models, objectives, parallel, step as step_lib
from kdjax.models import Outputs
from kdjax.train import evaluation
from kdjax.train.rundata import _text

TEXT = ("def naïve(x):\n    return x * 2  # ünïcödé €uro\n" * 8
        + "class Thing:\n    pass\n" * 6)


def _bigram(vocab: int, seed: int = 0):
  """A model whose logits at each position are a row of a table chosen by the current token."""
  table = jax.random.normal(jax.random.key(seed), (vocab, vocab), jnp.float32)
  apply = lambda params, x: Outputs(logits=params["table"][x], features={})
  return models.from_apply_fn(apply, {"table": table}), np.asarray(table)


def _state(model, example):
  return step_lib.DistillState.create(
      student=model, teacher=None,
      objective=objectives.combine({"ce": lm.token_cross_entropy_term()}), tx=optax.sgd(0.0),
      rng=jax.random.key(0), example_batch=example, input_key="tokens", label_key="targets")


def _numpy_bits_per_byte(table, batches):
  nll, nbytes = 0.0, 0
  for b in batches:
    logits = table[b["tokens"]].astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = -np.take_along_axis(log_p, b["targets"][..., None], -1)[..., 0]
    keep = b["mask"]
    nll += picked[keep].sum()
    nbytes += (b[lm.TARGET_BYTES_KEY][keep].sum() if lm.TARGET_BYTES_KEY in b else keep.sum())
  return nll / (math.log(2) * nbytes), nll, nbytes


def _evaluate(model, batches):
  runner = parallel.make_runner("jit")
  example = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
  state = runner.put_state(_state(model, example))
  return evaluation.evaluate(runner, state, batches, evaluation.make_token_reduce_fn(),
                             evaluation.finalize_tokens)


def _batches(windows, size):
  n = len(windows["tokens"])
  out = [{k: v[i:i + size] for k, v in windows.items()} for i in range(0, n - size + 1, size)]
  out[-1]["mask"] = out[-1]["mask"].copy()
  out[-1]["mask"][-1, 3:] = False  # Padding the evaluation must skip.
  return out


def test_byte_level_bits_per_byte_is_the_mean_nll_over_ln2():
  stream = np.frombuffer(TEXT.encode(), np.uint8).astype(np.int32)
  batches = _batches(_text._windows(stream, 16), 8)  # pylint: disable=protected-access
  assert lm.TARGET_BYTES_KEY not in batches[0]  # Byte-level data: one byte per target.
  model, table = _bigram(256)
  got = _evaluate(model, batches)
  want, nll, count = _numpy_bits_per_byte(table, batches)
  assert got["count"] == count
  np.testing.assert_allclose(got["bits_per_byte"], want, rtol=1e-5)
  np.testing.assert_allclose(got["bits_per_byte"], math.log2(got["perplexity"]), rtol=1e-5)
  np.testing.assert_allclose(got["nll"], nll / count, rtol=1e-5)


def test_bpe_bits_per_byte_sums_the_bytes_each_target_spells():
  pytest.importorskip("tokenizers")
  bpe = lm.BpeTokenizer.train([TEXT], vocab_size=300)
  enc = bpe.encode(TEXT)
  windows = _text._windows(enc.ids, 6, enc.num_bytes)  # pylint: disable=protected-access
  # Independently: the bytes of each target token's piece.
  pieces = np.vectorize(lambda i: len(bpe.token_bytes(int(i))))(windows["targets"])
  np.testing.assert_array_equal(windows[lm.TARGET_BYTES_KEY], pieces)
  assert pieces.sum() > 1.5 * pieces.size  # Tokens of several bytes: bytes != tokens.
  batches = _batches(windows, 8)
  model, table = _bigram(bpe.vocab_size, seed=1)
  got = _evaluate(model, batches)
  want, nll, nbytes = _numpy_bits_per_byte(table, batches)
  np.testing.assert_allclose(got["bits_per_byte"], want, rtol=1e-5)
  # Per token, the perplexity counts tokens; per byte, the same NLL spread over more bytes.
  np.testing.assert_allclose(got["bits_per_byte"],
                             math.log2(got["perplexity"]) * got["count"] / nbytes, rtol=1e-5)


def test_byte_counts_from_character_offsets_add_up_to_the_text():
  tokenizers = pytest.importorskip("tokenizers")
  bpe = lm.BpeTokenizer.train([TEXT], vocab_size=300)
  text = TEXT + "∑ 😀 end"  # Characters the BPE never saw: split into single bytes.
  raw = bpe.tokenizer.encode(text)
  counts = _text._byte_lengths(text, np.asarray(raw.offsets))  # pylint: disable=protected-access
  exact = bpe.encode(text).num_bytes
  assert counts.sum() == len(text.encode()) == exact.sum()
  # Both agree wherever a token ends on a character boundary (everywhere but inside '∑', '😀').
  ends, exact_ends = np.cumsum(counts), np.cumsum(exact)
  boundary = np.isin(exact_ends, np.cumsum([len(c.encode()) for c in text]))
  np.testing.assert_array_equal(ends[boundary], exact_ends[boundary])
  assert (~boundary).sum() == 2 + 3  # The bytes inside the two characters.
  # A special token (no text) spells no byte.
  tok = tokenizers.Tokenizer.from_str(bpe.tokenizer.to_str())
  tok.add_special_tokens(["<s>"])
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<s> $A <s>", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  enc = tok.encode("x = 1")
  counts = _text._byte_lengths("x = 1", np.asarray(enc.offsets))  # pylint: disable=protected-access
  assert counts[0] == counts[-1] == 0 and counts.sum() == 5


def test_bits_per_byte_refuses_bad_counts():
  with pytest.raises(ValueError, match="num_bytes"):
    lm.bits_per_byte(1.0, 0)
  with pytest.raises(ValueError, match="nll_nats"):
    lm.bits_per_byte(float("nan"), 3)
  np.testing.assert_allclose(lm.bits_per_byte(np.array([2.0, 4.0]) * math.log(2), [2, 2]),
                             [1.0, 2.0])

"""Language-model teacher caches (top-k and Gemma 3 sampled targets): built == computed directly,
resumable to identical arrays, refused when stale, on packed rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import lm, models, objectives
from kdjax import teacher_cache as tc
from kdjax.models.zoo import DecoderConfig

V = 23
DOCS = [np.random.default_rng(i).integers(0, V, n) for i, n in enumerate((9, 5, 12, 4, 7, 10))]
PACKED = lm.pack_sequences(DOCS, 8)["inputs"]  # 6 packed rows of 8: segments and positions


def _teacher(seed=0):
  config = DecoderConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8)
  return models.decoder_model(config, rng=jax.random.key(seed))


TEACHER = _teacher()
ARGS = dict(targets="sampled", k=4, seed=3, temperature=2.0, tokenizer="bytes", batch_size=2,
            chunk_size=2)


def _all_logits(teacher):
  """The teacher's logits on every packed row, ``[N, 8, V]``."""
  x = jax.tree.map(jnp.asarray, PACKED)
  return np.asarray(teacher.apply(teacher.params, {}, x, train=False, rng=None)[0].logits)


def test_sampled_cache_equals_the_direct_computation(tmp_path):
  cache = tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS)
  n = len(PACKED["tokens"])
  assert len(cache) == n and cache.targets == "sampled" and cache.k == 4
  idx = cache.arrays[objectives.SAMPLED_INDICES_KEY]
  w = cache.arrays[objectives.SAMPLED_WEIGHTS_KEY]
  assert idx.shape == w.shape == (n, 8, 4) and w.dtype == np.float32
  logits = _all_logits(TEACHER)
  for row in range(n):
    z = logits[row]
    key = jax.random.fold_in(jax.random.key(3), row)
    want_idx, want_w = lm.sample_teacher_targets(key, z, 4, temperature=2.0)
    np.testing.assert_array_equal(idx[row], want_idx)
    np.testing.assert_allclose(w[row], want_w, rtol=1e-5, atol=1e-7)
    # Gemma 3's weights: the teacher's probabilities at T on the sample, renormalised.
    p = np.exp(z / 2.0 - z.max(-1, keepdims=True) / 2.0)
    picked = np.take_along_axis(p / p.sum(-1, keepdims=True), np.asarray(want_idx), -1)
    np.testing.assert_allclose(w[row], picked / picked.sum(-1, keepdims=True), rtol=1e-4)
  # A batch of rows carries its rows' targets under the keys sampled_kd reads.
  got = cache.gather(np.array([4, 1]))
  np.testing.assert_array_equal(got[objectives.SAMPLED_INDICES_KEY], idx[[4, 1]])
  # Opening it again reuses it (nothing recomputed).
  calls = []
  tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS,
                       on_chunk=lambda d, t: calls.append(d))
  assert calls == []


def test_topk_cache_equals_the_teacher_topk(tmp_path):
  cache = tc.build_token_cache(tmp_path / "t", TEACHER, PACKED, targets="topk", k=5,
                               batch_size=4)
  values = cache.arrays[objectives.TOPK_VALUES_KEY]
  indices = cache.arrays[objectives.TOPK_INDICES_KEY]
  logits = _all_logits(TEACHER)
  for row in range(len(PACKED["tokens"])):
    z = logits[row]
    order = np.argsort(-z, axis=-1)[:, :5]
    np.testing.assert_array_equal(indices[row], order)
    np.testing.assert_allclose(values[row], np.take_along_axis(z, order, -1), rtol=1e-5,
                               atol=1e-6)


class Stop(Exception):
  pass


def test_interrupted_build_resumes_to_identical_arrays(tmp_path):
  whole = tc.build_token_cache(tmp_path / "whole", TEACHER, PACKED, **ARGS)

  def stop_after_first(done, total):
    assert total == 3
    if done == 1:
      raise Stop

  with pytest.raises(Stop):
    tc.build_token_cache(tmp_path / "cut", TEACHER, PACKED, **ARGS, on_chunk=stop_after_first)
  with pytest.raises(tc.TeacherCacheError, match="no complete token cache"):
    tc.load_token_cache(tmp_path / "cut")
  resumed_units = []
  resumed = tc.build_token_cache(tmp_path / "cut", TEACHER, PACKED, **ARGS,
                                 on_chunk=lambda d, t: resumed_units.append(d))
  assert resumed_units == [2, 3]  # the finished unit is kept
  for key, array in whole.arrays.items():
    np.testing.assert_array_equal(resumed.arrays[key], array)


@pytest.mark.parametrize("change, field", [
    ({"k": 3}, "k"), ({"seed": 4}, "seed"), ({"tokenizer": "other.json"}, "tokenizer"),
    ({"temperature": 1.0}, "temperature"), ({"teacher": "other"}, "teacher"),
    ({"rows": "other"}, "rows"),
])
def test_stale_cache_is_refused(tmp_path, change, field):
  tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS)
  args, teacher, rows = {**ARGS}, TEACHER, PACKED
  if field == "teacher":
    teacher = _teacher(seed=1)
  elif field == "rows":
    rows = {**PACKED, "tokens": (PACKED["tokens"] + 1) % V}
  else:
    args.update(change)
  with pytest.raises(tc.TokenCacheStale) as caught:
    tc.build_token_cache(tmp_path / "c", teacher, rows, **args, on_stale="error")
  message = str(caught.value)
  assert "\n" not in message and "stale" in message and "on_stale='rebuild'" in message
  assert list(caught.value.differences) == [field]
  # The default rebuilds it for the new settings.
  assert tc.build_token_cache(tmp_path / "c", teacher, rows, **args).k == args["k"]
  assert tc.build_token_cache(tmp_path / "c", teacher, rows, **args, on_stale="error")


def test_half_built_cache_of_other_settings_is_stale(tmp_path):
  with pytest.raises(Stop):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS,
                         on_chunk=lambda d, t: (_ for _ in ()).throw(Stop()))
  with pytest.raises(tc.TokenCacheStale, match=r"k \(cache 4, now 2\)"):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **{**ARGS, "k": 2}, on_stale="error")


def test_corrupt_cache_is_never_used(tmp_path):
  cache = tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS)
  path = tmp_path / "c" / "weights.npy"
  data = bytearray(path.read_bytes())
  data[-3] ^= 0xFF
  path.write_bytes(bytes(data))
  del cache
  with pytest.raises(tc.TeacherCacheCorrupt, match="weights.npy does not match its checksum"):
    tc.load_token_cache(tmp_path / "c")
  with pytest.raises(tc.TeacherCacheCorrupt):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS, on_stale="error")
  rebuilt = tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, **ARGS)
  assert np.isfinite(rebuilt.arrays[objectives.SAMPLED_WEIGHTS_KEY]).all()


def test_bad_arguments(tmp_path):
  with pytest.raises(tc.TeacherCacheError, match=r"k must be an integer in \[1, vocab=23\]"):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, targets="sampled", k=24)
  with pytest.raises(tc.TeacherCacheError, match="targets must be one of"):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, targets="topp", k=2)
  with pytest.raises(tc.TeacherCacheError, match="weighting must be one of"):
    tc.build_token_cache(tmp_path / "c", TEACHER, PACKED, targets="sampled", k=2,
                         weighting="uniform")

"""Tokenizers with byte offsets, span alignment and cross-tokenizer windows, checked against a
brute-force alignment written here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import lm, losses

TEXT = ("def naïve(x):\n    return x * 2  # ünïcödé €uro and 😀\n" * 6
        + "class Thing:\n    pass\n" * 4)


@pytest.fixture(scope="module")
def bpe():
  pytest.importorskip("tokenizers")
  return lm.BpeTokenizer.train([TEXT], vocab_size=300)


def _token_bytes(tok, enc):
  return [tok.token_bytes(int(i)) for i in enc.ids]


def test_byte_tokenizer_offsets():
  tok = lm.ByteTokenizer(special_tokens=("<bos>",))
  enc = tok.encode("aé")
  np.testing.assert_array_equal(enc.ids, [97, 0xC3, 0xA9])
  np.testing.assert_array_equal(enc.offsets, [[0, 1], [1, 2], [2, 3]])
  assert tok.vocab_size == 257 and tok.token_id("<bos>") == 256 and not enc.special.any()


def test_bpe_offsets_are_bytes_and_tile_the_text(bpe):
  data = TEXT.encode()
  enc = bpe.encode(TEXT)
  pieces = _token_bytes(bpe, enc)
  assert b"".join(pieces) == data
  assert len(enc) < len(data) / 2  # merges happened
  for (start, end), piece in zip(enc.offsets, pieces):
    assert data[start:end] == piece
  # '∑' (3 bytes) never occurs in the training text: byte-level BPE spells it with one token per
  # byte, so two tokens start inside the character, where character offsets cannot point.
  enc = bpe.encode("x∑y")
  assert [bpe.token_bytes(int(i)) for i in enc.ids] == [b"x", b"\xe2", b"\x88", b"\x91", b"y"]
  np.testing.assert_array_equal(enc.offsets, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])


def test_bpe_save_load_and_fingerprint(bpe, tmp_path):
  path = str(tmp_path / "tokenizer.json")
  bpe.save(path)
  with pytest.raises(FileExistsError):
    bpe.save(path)
  again = lm.BpeTokenizer.load(str(tmp_path))
  assert again.fingerprint() == bpe.fingerprint() != lm.ByteTokenizer().fingerprint()
  np.testing.assert_array_equal(again.encode(TEXT).ids, bpe.encode(TEXT).ids)


def test_bpe_refuses_other_tokenizers():
  tokenizers = pytest.importorskip("tokenizers")
  Tokenizer, models, pre_tokenizers = (tokenizers.Tokenizer, tokenizers.models,
                                       tokenizers.pre_tokenizers)
  tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  with pytest.raises(ValueError, match="byte-level BPE"):
    lm.BpeTokenizer(tok)


def _enc(pieces, special=()):
  """An Encoding from byte lengths (0 = a special token)."""
  lengths = np.asarray(pieces, np.int64)
  ends = np.cumsum(lengths)
  return lm.Encoding(np.arange(len(lengths), dtype=np.int32),
                     np.stack([ends - lengths, ends], -1), lengths == 0)


def test_align_spans_by_hand():
  # Text of 8 bytes. Student: [ab][c][def][gh]; teacher: <s>[a][bc][d][efg][h].
  student = _enc([2, 1, 3, 2])
  teacher = _enc([0, 1, 2, 1, 3, 1])
  s, t, n = lm.align_spans(student, teacher)
  # Common ends: 3 ("abc"), 8 (end); 6 is a student end but not the teacher's.
  np.testing.assert_array_equal(s, [0, 0, 1, 1])
  np.testing.assert_array_equal(t, [-1, 0, 0, 1, 1, 1])
  assert n == 2


def test_align_spans_refuses_different_texts():
  with pytest.raises(ValueError, match="same text"):
    lm.align_spans(_enc([2, 2]), _enc([1, 1, 1]))


def _reference_windows(student, teacher, out, length, teacher_length, s_bos, t_bos):
  """Brute force: per window, the spans (consecutive common boundaries of the whole text) whose
  every target token lies inside both windows, found with Python sets and loops."""
  s_off, t_off = student.offsets.tolist(), teacher.offsets.tolist()
  s_ends = {e for (b, e), sp in zip(s_off, student.special) if not sp}
  t_ends = {e for (b, e), sp in zip(t_off, teacher.special) if not sp}
  bounds = [0] + sorted(s_ends & t_ends)
  n_windows = len(out["tokens"])
  for w in range(n_windows):
    a = w * length
    s_targets = list(range(a, a + length)) if s_bos is not None else list(range(a + 1,
                                                                                a + length + 1))
    context = s_off[a][0]
    u = min(i for i in range(len(t_off) + 1) if i == len(t_off) or t_off[i][0] >= context)
    t0 = u if t_bos is not None else u + 1
    t_targets = [j for j in range(t0, t0 + teacher_length) if j < len(t_off)]
    spans = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      s_tok = [i for i, (b, e) in enumerate(s_off) if lo <= b and e <= hi and e > b]
      t_tok = [j for j, (b, e) in enumerate(t_off) if lo <= b and e <= hi and e > b]
      if set(s_tok) <= set(s_targets) and set(t_tok) <= set(t_targets):
        spans.append((s_tok, t_tok))
    expect_s = np.full(length, -1)
    expect_t = np.full(teacher_length, -1)
    for k, (s_tok, t_tok) in enumerate(spans):
      expect_s[[s_targets.index(i) for i in s_tok]] = k
      expect_t[[t_targets.index(j) for j in t_tok]] = k
      assert out["student_span_starts"][w, k] == s_targets.index(s_tok[0])
      assert out["teacher_span_starts"][w, k] == t_targets.index(t_tok[0])
    np.testing.assert_array_equal(out["student_spans"][w], expect_s)
    np.testing.assert_array_equal(out["teacher_spans"][w], expect_t)
    np.testing.assert_array_equal(out["span_mask"][w], np.arange(out["span_mask"].shape[1])
                                  < len(spans))
    np.testing.assert_array_equal(out["targets"][w], student.ids[s_targets])
    np.testing.assert_array_equal(out["teacher_targets"][w][:len(t_targets)],
                                  teacher.ids[t_targets])
    assert out["teacher_mask"][w].sum() == len(t_targets)


@pytest.mark.parametrize("s_bos,t_bos", [(None, None), (None, 256), (1, None)])
def test_windows_match_brute_force_bpe_student_byte_teacher(bpe, s_bos, t_bos):
  student, teacher = bpe.encode(TEXT), lm.ByteTokenizer(("<bos>",)).encode(TEXT)
  out = lm.cross_tokenizer_windows(student, teacher, length=12, teacher_length=40,
                                   student_bos=s_bos, teacher_bos=t_bos)
  assert out["tokens"].shape == (len(out["tokens"]), 12)
  assert out["teacher_tokens"].shape[1] == 40 and out["span_mask"].shape[1] == 12
  _reference_windows(student, teacher, out, 12, 40, s_bos, t_bos)
  if t_bos is not None:
    assert (out["teacher_tokens"][:, 0] == t_bos).all()
  assert out["span_mask"].sum() > 0.5 * out["mask"].sum()  # most student targets align


def test_windows_match_brute_force_byte_student_bpe_teacher(bpe):
  # Teacher tokens now span several student tokens, and a short teacher window cuts spans.
  student, teacher = lm.ByteTokenizer().encode(TEXT), bpe.encode(TEXT)
  out = lm.cross_tokenizer_windows(student, teacher, length=16, teacher_length=5)
  _reference_windows(student, teacher, out, 16, 5, None, None)
  assert (out["target_bytes"] == 1).all()


def test_windows_span_text_is_the_same_on_both_sides(bpe):
  student, teacher = bpe.encode(TEXT), lm.ByteTokenizer().encode(TEXT)
  out = lm.cross_tokenizer_windows(student, teacher, length=10, teacher_length=30)
  for w in range(len(out["tokens"])):
    for k in range(int(out["span_mask"][w].sum())):
      s_text = b"".join(bpe.token_bytes(int(i))
                        for i in out["targets"][w][out["student_spans"][w] == k])
      t_text = bytes(out["teacher_targets"][w][out["teacher_spans"][w] == k].tolist())
      assert s_text == t_text and s_text


def test_cross_tokenizer_losses_vanish_for_one_model_seen_twice():
  # The same byte-level tokenization and the same logits on both sides: nothing to distil.
  enc = lm.ByteTokenizer().encode(TEXT[:200])
  out = lm.cross_tokenizer_windows(enc, enc, length=16, teacher_length=16)
  batch = {k: jnp.asarray(v[:3]) for k, v in out.items()}
  logits = jax.random.normal(jax.random.key(0), (3, 16, 256))
  fn = jax.jit(lm.cross_tokenizer_losses)
  got = fn(logits, logits, batch)
  np.testing.assert_allclose(got["uld"], 0.0, atol=1e-6)
  np.testing.assert_allclose(got["span_kl"], 0.0, atol=1e-6)
  got = fn(logits, jax.random.normal(jax.random.key(1), (3, 16, 256)), batch)
  assert got["uld"] > 0 and got["span_kl"] > 0


def test_gather_positions():
  logits = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  got = lm.gather_positions(logits, jnp.array([[3, 0], [1, 1]]))
  np.testing.assert_array_equal(got, np.asarray(logits)[[[0, 0], [1, 1]], [[3, 0], [1, 1]]])
  with pytest.raises(ValueError, match="positions"):
    lm.gather_positions(logits, jnp.zeros((2,), jnp.int32))


def test_bits_per_byte():
  assert lm.bits_per_byte(np.log(2.0) * 300, 100) == pytest.approx(3.0)
  np.testing.assert_allclose(lm.bits_per_byte(np.array([np.log(4.0)]), np.array([1])), [2.0])
  # A byte-level model's bits per byte is its mean NLL in bits; a BPE model's NLL of the same
  # text over fewer tokens gives the same rate if it assigns the text the same probability.
  assert lm.bits_per_byte(10 * np.log(3.0), 10) == pytest.approx(np.log2(3.0))
  with pytest.raises(ValueError, match="num_bytes"):
    lm.bits_per_byte(1.0, 0)
  with pytest.raises(ValueError, match="nll_nats"):
    lm.bits_per_byte(-1.0, 5)


def test_route_teachers():
  ids = jnp.array([2, 0, 1, 0, 5])
  outs = [{"logits": jnp.full((5, 3, 4), float(t)), "h": jnp.full((5, 2), 10.0 * t)}
          for t in range(3)]
  outs[1]["logits"] = outs[1]["logits"].at[0].set(jnp.nan)  # not example 0's teacher
  selected, masks = jax.jit(lm.route_teachers)(ids, outs)
  np.testing.assert_array_equal(selected["logits"][:, 0, 0], [2.0, 0.0, 1.0, 0.0, 0.0])
  np.testing.assert_array_equal(selected["h"][:, 0], [20.0, 0.0, 10.0, 0.0, 0.0])
  np.testing.assert_array_equal(masks, np.arange(3)[:, None] == np.asarray(ids)[None, :])
  assert not masks[:, 4].any()  # an unknown id is scored by no teacher
  # Each teacher scored only on its examples: a per-example loss masked by its row.
  per_example = jnp.arange(5.0)
  np.testing.assert_allclose([losses.masked_mean(per_example, m) for m in masks], [2.0, 2.0, 0.0])
  with pytest.raises(ValueError, match="same output shapes"):
    lm.route_teachers(ids, [outs[0], {"logits": jnp.zeros((5, 3, 5)), "h": outs[0]["h"]}])
  with pytest.raises(ValueError, match="teacher_id"):
    lm.route_teachers(ids[:, None], outs)


def test_cross_tokenizer_term(bpe):
  from kdjax.models import Outputs
  student, teacher = bpe.encode(TEXT), lm.ByteTokenizer().encode(TEXT)
  out = lm.cross_tokenizer_windows(student, teacher, length=8, teacher_length=24)
  batch = {k: jnp.asarray(v[:2]) for k, v in out.items()}
  s = jax.random.normal(jax.random.key(0), (2, 8, bpe.vocab_size))
  t = jax.random.normal(jax.random.key(1), (2, 24, 256))
  # The byte teacher's id of each BPE entry's first byte (ids are byte values here).
  first_byte = np.array([tok[0] if tok else -1 for tok in map(bpe.token_bytes,
                                                              range(bpe.vocab_size))], np.int32)
  for name in ("span_kl", "uld", "next_byte_kl"):
    fb = first_byte if name == "next_byte_kl" else None
    term = lm.cross_tokenizer_term(name, temperature=2.0, first_byte=fb)
    assert "student_spans" in term.needs.batch and term.needs.teacher_outputs
    params, state = term.init(None, Outputs(s), Outputs(t), batch)

    def value(s_logits, t_logits, term=term):
      return term.apply(params, state, Outputs(s_logits), Outputs(t_logits), batch, 0)[0]

    expected = jax.jit(lm.cross_tokenizer_losses, static_argnames="temperature")(
        s, t, batch, temperature=2.0, first_byte=first_byte)[name]
    got, (g_s, g_t) = jax.jit(jax.value_and_grad(value, argnums=(0, 1)))(s, t)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.isfinite(g_s).all() and np.abs(g_s).sum() > 0 and not np.asarray(g_t).any()
  with pytest.raises(ValueError, match="cross_tokenizer_windows"):
    term.apply({}, {}, Outputs(s), Outputs(t), {"targets": batch["targets"]}, 0)
  with pytest.raises(ValueError, match="loss must be one of"):
    lm.cross_tokenizer_term("kl")
  with pytest.raises(ValueError, match="first_byte"):
    lm.cross_tokenizer_term("next_byte_kl")
  # Gathered at the span starts, the term is the loss of the logits there.
  s_at = lm.gather_positions(s, batch["student_span_starts"])
  t_at = lm.gather_positions(t, batch["teacher_span_starts"])
  per_span = losses.next_byte_kl(s_at, t_at, first_byte, temperature=2.0,
                                 mask=batch["span_mask"])
  np.testing.assert_allclose(
      lm.cross_tokenizer_losses(s, t, batch, temperature=2.0, first_byte=first_byte)
      ["next_byte_kl"], losses.masked_mean(per_span, batch["span_mask"]), rtol=1e-6)


def test_bpe_special_tokens_cover_no_text():
  pytest.importorskip("tokenizers")
  tok = lm.BpeTokenizer.train(["hello world " * 20], vocab_size=270, special_tokens=("<eos>",))
  eos = tok.token_id("<eos>")
  assert tok.token_bytes(eos) == b"" and 257 < tok.vocab_size <= 270  # merges run out early
  assert eos not in tok.encode("hello world").ids.tolist()
  with pytest.raises(ValueError, match="special token's name"):
    tok.encode("hello<eos>world")

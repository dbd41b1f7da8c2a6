"""Packed rows: segments and positions reach teacher and student; losses see each document."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import lm, losses, models, objectives
from kdjax.models.zoo import DecoderConfig

V = 30
DOCS = [np.random.default_rng(i).integers(0, V, n) for i, n in enumerate((6, 4, 9, 3, 5))]


def test_pack_sequences_layout():
  data = lm.pack_sequences(DOCS, 7, pad_id=0)
  inputs = data["inputs"]
  # 5 + 3 + 8 + 2 + 4 = 22 examples in rows of 7; a document that does not fit continues in the
  # next row as a new segment whose positions restart.
  np.testing.assert_array_equal(inputs["segment_ids"], [[1, 1, 1, 1, 1, 2, 2],
                                                        [1, 2, 2, 2, 2, 2, 2],
                                                        [1, 1, 2, 2, 3, 3, 3],
                                                        [1, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(inputs["positions"][1], [0, 0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(inputs["tokens"][0, :5], DOCS[0][:-1])
  np.testing.assert_array_equal(data["targets"][0, :5], DOCS[0][1:])
  np.testing.assert_array_equal(inputs["tokens"][1, 1:], DOCS[2][:6])
  np.testing.assert_array_equal(data["targets"][1, 1:], DOCS[2][1:7])
  np.testing.assert_array_equal(data["mask"], inputs["segment_ids"] > 0)
  assert data["mask"].sum() == sum(len(d) - 1 for d in DOCS)
  batch = next(lm.batches(data, 2, epochs=1))
  assert batch["inputs"]["tokens"].shape == (2, 7) and batch["mask"].shape == (2, 7)


def _decoder(seed, width):
  config = DecoderConfig(vocab_size=V, hidden_size=width, intermediate_size=2 * width,
                         num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
  return models.decoder_model(config, rng=jax.random.key(seed))


def test_packed_distillation_sees_each_document_alone():
  data = lm.pack_sequences(DOCS, 8)
  batch = jax.tree.map(jnp.asarray, data)
  teacher, student = _decoder(0, 16), _decoder(1, 8)
  objective = objectives.combine({"ce": (lm.token_cross_entropy_term(), 1.0),
                                  "kd": (lm.token_kd_term(temperature=2.0), 1.0)})
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(0.0), rng=jax.random.key(0), example_batch=batch,
                                    input_key="inputs", label_key="targets")
  _, metrics = jax.jit(kdjax.distill_step)(state, batch)

  forward = jax.jit(lambda m, x: m.apply(m.params, {}, x, train=False)[0].logits,
                    static_argnums=0)
  ce, kd, count = 0.0, 0.0, 0
  for doc in DOCS:
    x = jnp.asarray(doc[None, :-1], jnp.int32)
    s, t = forward(student, x), forward(teacher, x)
    ce += float(jnp.sum(losses.cross_entropy(s, jnp.asarray(doc[None, 1:]))))
    kd += float(jnp.sum(losses.kd(s, t, temperature=2.0)))
    count += len(doc) - 1
  np.testing.assert_allclose(metrics["ce"], ce / count, rtol=1e-5)
  np.testing.assert_allclose(metrics["kd"], kd / count, rtol=1e-5)

"""CRD's reference negative protocol: negatives only from other classes (negatives='other_class')."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import objectives
from kdjax.models import Outputs
from kdjax.objectives import _crd

N, CLASSES = 40, 4
LABELS = np.random.default_rng(0).integers(0, CLASSES, N).astype(np.int32)


def test_exact_sampler_draws_uniformly_from_the_other_classes():
  sampler = _crd._OtherClassSampler(LABELS, N)
  idx = jnp.arange(N, dtype=jnp.int32)
  neg = np.asarray(jax.jit(sampler.draw, static_argnums=2)(jax.random.key(0), idx, 500))
  assert neg.shape == (N, 500)
  assert np.all(LABELS[neg] != LABELS[:, None])
  # Uniform over the anchor's other-class examples: each appears ~500 / (N - n_c) times.
  for anchor in (0, 7):
    pool = np.flatnonzero(LABELS != LABELS[anchor])
    freq = np.bincount(neg[anchor], minlength=N)[pool] / 500.0
    np.testing.assert_allclose(freq, 1.0 / len(pool), atol=0.05)
    assert set(np.unique(neg[anchor])) == set(pool)


def _outs(b, seed):
  rng = np.random.default_rng(seed)
  f = lambda: jnp.asarray(rng.standard_normal((b, 5)), jnp.float32)  # noqa: E731
  return Outputs(jnp.zeros((b, 3)), {"pre_logits": f()}), Outputs(jnp.zeros((b, 3)),
                                                                  {"pre_logits": f()})


@pytest.mark.parametrize("given_labels", [True, False])
def test_crd_other_class_term_contrasts_only_other_classes(given_labels):
  term = objectives.crd(num_data=N, feat_dim=4, num_negatives=16, negatives="other_class",
                        labels=LABELS if given_labels else None)
  assert ("label" in term.needs.batch) != given_labels
  s, t = _outs(N, 0)
  batch = {"index": np.arange(N, dtype=np.int32), "label": LABELS}
  params, state = term.init(jax.random.key(0), s, t, batch)
  loss, state, _ = jax.jit(term.apply)(params, state, s, t, batch, 0)
  assert np.isfinite(float(loss))
  if not given_labels:
    np.testing.assert_array_equal(state["labels"], LABELS)  # learned from the batch
  # The negatives the term drew for this step: recompute them with its own key.
  key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), 0)
  idx = jnp.arange(N, dtype=jnp.int32)
  if given_labels:
    neg = _crd._OtherClassSampler(LABELS, N).draw(key, idx, 16)
  else:
    neg = _crd._uniform_negatives(key, idx, 16, N)
    for r in range(_crd.REJECTION_ROUNDS):
      same = jnp.asarray(LABELS)[neg] == jnp.asarray(LABELS)[:, None]
      neg = jnp.where(same, _crd._uniform_negatives(jax.random.fold_in(key, r + 1), idx, 16, N),
                      neg)
  assert np.all(LABELS[np.asarray(neg)] != LABELS[:, None])


def test_bad_labels_name_the_fix():
  with pytest.raises(ValueError, match="integer class of each of the 40"):
    objectives.crd(num_data=N, negatives="other_class", labels=LABELS[:10])
  with pytest.raises(ValueError, match="negatives="):
    objectives.crd(num_data=N, negatives="same_class")

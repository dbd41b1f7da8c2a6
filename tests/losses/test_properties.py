"""Properties every loss shares: jit, vmap, bfloat16 inputs, gradients, output shape and dtype."""
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses
from tests import helpers

_normal = helpers.normal_sampler(42)


LOGITS_S, LOGITS_T = _normal(4, 6, scale=2.0), _normal(4, 6, scale=2.0)
LABELS = np.array([1, 0, 5, 3], np.int32)
MAPS_S, MAPS_T = _normal(3, 4, 4, 5), _normal(3, 4, 4, 6)
EMB_S, EMB_T = _normal(5, 4), _normal(5, 6)
LM_S, LM_T = _normal(2, 3, 6, scale=2.0), _normal(2, 3, 6, scale=2.0)
MASK = np.array([[1, 1, 1], [1, 0, 1]], np.int32)
TOPK_LOGITS, TOPK_IDX = (np.asarray(a) for a in losses.topk_teacher_logits(LM_T, 3))
TOPK_LOGP, _ = (np.asarray(a) for a in losses.topk_teacher_logits(LM_T, 3, log_probs=True,
                                                                    temperature=2.0))
ATT_S = np.asarray(jax.nn.softmax(_normal(2, 2, 3, 4)))
ATT_T = np.asarray(jax.nn.softmax(_normal(2, 2, 3, 4)))


class Case(NamedTuple):
  fn: Callable[..., jax.Array]
  args: tuple[Any, ...]
  diff: tuple[int, ...]  # positions of the float arguments (differentiated, cast to bf16)
  shape: tuple[int, ...]  # expected output shape
  kwargs: dict = {}


CASES = {
    "kd": Case(losses.kd, (LOGITS_S, LOGITS_T), (0, 1), (4,), {"temperature": 2.0}),
    "soft_cross_entropy": Case(losses.soft_cross_entropy, (LOGITS_S, LOGITS_T), (0, 1), (4,),
                               {"temperature": 2.0}),
    "reverse_kd": Case(losses.reverse_kd, (LOGITS_S, LOGITS_T), (0, 1), (4,),
                       {"temperature": 2.0}),
    "jensen_shannon": Case(losses.jensen_shannon, (LOGITS_S, LOGITS_T), (0, 1), (4,),
                           {"temperature": 2.0}),
    "logit_mse": Case(losses.logit_mse, (LOGITS_S, LOGITS_T), (0, 1), (4,)),
    "dkd": Case(losses.dkd, (LOGITS_S, LOGITS_T, LABELS), (0, 1), (4,)),
    "dist": Case(losses.dist, (LOGITS_S, LOGITS_T), (0, 1), (), {"temperature": 2.0}),
    "standardize_logits": Case(losses.standardize_logits, (LOGITS_S,), (0,), (4, 6)),
    "cross_entropy": Case(losses.cross_entropy, (LOGITS_S, LABELS), (0,), (4,),
                          {"label_smoothing": 0.1}),
    "feature_mse": Case(losses.feature_mse, (MAPS_S, MAPS_T[..., :5]), (0, 1), (3,)),
    "attention_transfer": Case(losses.attention_transfer, (MAPS_S, MAPS_T), (0, 1), (3,)),
    "nst": Case(losses.nst, (MAPS_S, MAPS_T), (0, 1), (3,)),
    "cosine_distance": Case(losses.cosine_distance, (MAPS_S, MAPS_T[..., :5]), (0, 1),
                            (3, 4, 4)),
    "similarity_preserving": Case(losses.similarity_preserving, (EMB_S, EMB_T), (0, 1), ()),
    "rkd_distance": Case(losses.rkd_distance, (EMB_S, EMB_T), (0, 1), ()),
    "rkd_angle": Case(losses.rkd_angle, (EMB_S, EMB_T), (0, 1), ()),
    "pkt": Case(losses.pkt, (EMB_S, EMB_T), (0, 1), ()),
    "cka": Case(losses.cka, (EMB_S, EMB_T), (0, 1), ()),
    # The response losses on [B, L, V] logits with a [B, L] mask.
    "kd_tokens": Case(losses.kd, (LM_S, LM_T, MASK), (0, 1), (2, 3), {"temperature": 2.0}),
    "reverse_kd_tokens": Case(losses.reverse_kd, (LM_S, LM_T, MASK), (0, 1), (2, 3)),
    "jensen_shannon_tokens": Case(losses.jensen_shannon, (LM_S, LM_T, MASK), (0, 1), (2, 3)),
    "skew_kl": Case(losses.skew_kl, (LM_S, LM_T, MASK), (0, 1), (2, 3), {"alpha": 0.2}),
    "skew_reverse_kl": Case(losses.skew_reverse_kl, (LM_S, LM_T, MASK), (0, 1), (2, 3),
                            {"alpha": 0.2}),
    "sparse_kd_renormalize": Case(losses.sparse_kd, (LM_S, TOPK_LOGITS, TOPK_IDX, MASK), (0, 1),
                                  (2, 3), {"temperature": 2.0}),
    "sparse_kd_remainder": Case(losses.sparse_kd, (LM_S, TOPK_LOGP, TOPK_IDX, MASK), (0, 1),
                                (2, 3), {"temperature": 2.0, "mode": "remainder"}),
    "hidden_mse": Case(losses.hidden_mse, (LM_S, LM_T, MASK), (0, 1), (2, 3)),
    "attention_kl": Case(losses.attention_kl, (ATT_S, ATT_T, MASK), (0, 1), (2, 3)),
    "attention_mse": Case(losses.attention_mse, (ATT_S, ATT_T, MASK), (0, 1), (2, 3)),
    "masked_mean": Case(losses.masked_mean, (LM_S[..., 0], MASK), (0,), ()),
}
NAMES = sorted(CASES)


def _call(case: Case, args) -> Callable[..., jax.Array]:
  """The loss as a function of its float arguments only (the others held fixed)."""
  def f(*floats):
    full = list(args)
    for i, x in zip(case.diff, floats):
      full[i] = x
    if "mask" in case.fn.__code__.co_varnames and len(full) > _n_positional(case.fn):
      *full, mask = full
      return case.fn(*full, mask=mask, **case.kwargs)
    return case.fn(*full, **case.kwargs)
  return f


def _n_positional(fn):
  code = fn.__code__
  return code.co_argcount


@functools.cache
def _compiled(name: str) -> Callable[..., jax.Array]:
  """One jitted function per case, shared by the tests below (compilation is the cost)."""
  case = CASES[name]
  return jax.jit(_call(case, case.args))


def _floats(case, dtype):
  return [np.asarray(case.args[i]).astype(dtype) for i in case.diff]


# Declared to kdjax.testing in test_kit_cases.py (jit/pmap variants, bfloat16, gradients), with
# their references in test_catalogue.py; the list-of-maps and helper functions there and in
# test_conventions.py.
KIT_COVERED = {"correlation_congruence", "factor_transfer", "activation_boundary", "ofd", "srd",
               "mlkd"}
ELSEWHERE = {"fsp", "fsp_matrix", "kdsvd", "ofd_margin", "adaptive_avg_pool", "match_spatial",
             "generalized_jsd"}  # a masked token mean (scalar): tests/lm/test_chunked.py
# Against their formulas with gradient checks in tests/losses/test_crd_vid_review_losses.py.
ELSEWHERE |= {"nce_loss", "vid_nll", "hierarchical_context_loss"}
# Across tokenizers and sampled targets: tests/losses/test_cross_tokenizer.py,
# tests/lm/test_sampled_targets.py.
ELSEWHERE |= {"span_kl", "uld", "next_byte_kl", "sampled_cross_entropy"}
# Dense prediction (segmentation, detection): tests/dense/.
ELSEWHERE |= {"pixel_kd", "channel_wise_distillation", "pairwise_similarity_distillation",
              "heatmap_kd", "localization_distillation", "feature_imitation",
              "heatmap_focal_loss", "distribution_focal_loss", "edge_distances", "point_targets",
              "imitation_mask", "cell_centers", "teacher_confidence"}


def test_every_public_name_is_covered():
  public = {name for name in losses.__all__ if callable(getattr(losses, name))}  # not constants
  public -= {"topk_teacher_logits"}  # a selector, tested on its own
  covered = {case.fn.__name__ for case in CASES.values()} | KIT_COVERED | ELSEWHERE
  assert public == covered, public ^ covered


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_with_expected_shape_and_dtype(name):
  case = CASES[name]
  eager = _call(case, case.args)(*_floats(case, np.float32))
  jitted = _compiled(name)(*_floats(case, np.float32))
  assert eager.shape == case.shape and eager.dtype == jnp.float32
  assert jitted.shape == case.shape and jitted.dtype == jnp.float32
  assert np.all(np.isfinite(jitted))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_are_computed_in_float32(name):
  case = CASES[name]
  f = _compiled(name)
  low = [jnp.asarray(x, jnp.bfloat16) for x in _floats(case, np.float32)]
  out = f(*low)
  assert out.dtype == jnp.float32 and out.shape == case.shape
  assert np.all(np.isfinite(out))
  # Same values as float32 math on the rounded inputs, and close to the unrounded result.
  rounded = f(*[x.astype(jnp.float32) for x in low])
  np.testing.assert_allclose(out, rounded, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, f(*_floats(case, np.float32)), rtol=5e-2, atol=2e-2)


# One loss per module and input kind: vmap exercises the shape checks and the batch-axis maths.
VMAP_NAMES = ["dkd", "dist", "attention_transfer", "rkd_angle", "cka", "sparse_kd_remainder",
              "attention_kl", "masked_mean"]


@pytest.mark.parametrize("name", VMAP_NAMES)
def test_vmap_over_an_extra_leading_axis(name):
  case = CASES[name]
  floats = _floats(case, np.float32)
  flipped = [x[::-1].copy() for x in floats]  # a second, different item
  fixed = [a for i, a in enumerate(case.args) if i not in case.diff]

  def per_item(*args):  # float arguments first, then the fixed ones (labels, indices, mask)
    full, it_f, it_x = [], iter(args[:len(floats)]), iter(args[len(floats):])
    for i in range(len(case.args)):
      full.append(next(it_f) if i in case.diff else next(it_x))
    return _call(case, full)(*[full[i] for i in case.diff])

  stacked = [np.stack([a, b]) for a, b in zip(floats, flipped)] + [np.stack([x, x]) for x in fixed]
  batched = jax.jit(jax.vmap(per_item))(*stacked)
  f = _compiled(name)
  np.testing.assert_allclose(batched, np.stack([f(*floats), f(*flipped)]), rtol=1e-5, atol=1e-6)


# Forward mode too for one loss of each kind (each mode is one more compilation per loss).
FWD_NAMES = {"kd", "dkd", "attention_transfer", "rkd_angle", "cka", "kd_tokens",
             "sparse_kd_remainder"}


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
  case = CASES[name]
  modes = ("fwd", "rev") if name in FWD_NAMES else ("rev",)
  with jax.enable_x64(True):  # float64 in, float64 math: tight finite differences
    check_grads(_compiled(name), _floats(case, np.float64), order=1, modes=modes, eps=1e-5,
                atol=1e-5, rtol=1e-5)

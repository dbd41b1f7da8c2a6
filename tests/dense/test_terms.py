"""Dense terms: each equals its loss reduced over the batch, declares what it reads, is registered
once, and trains inside kdjax.distill_step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import losses, models, objectives
from kdjax.models import zoo

_rng = np.random.default_rng(1)
B = 2
SEG_S = _rng.standard_normal((B, 4, 4, 3)).astype(np.float32)
SEG_T = _rng.standard_normal((B, 4, 4, 3)).astype(np.float32)
FEAT_S = _rng.standard_normal((B, 2, 2, 5)).astype(np.float32)
FEAT_T = _rng.standard_normal((B, 2, 2, 6)).astype(np.float32)
HEAT_S = _rng.standard_normal((B, 4, 4, 3)).astype(np.float32)
HEAT_T = _rng.standard_normal((B, 4, 4, 3)).astype(np.float32)
BOX_S = _rng.standard_normal((B, 4, 4, 4, 5)).astype(np.float32)
BOX_T = _rng.standard_normal((B, 4, 4, 4, 5)).astype(np.float32)
BATCH = {"label": _rng.integers(0, 3, (B, 4, 4)).astype(np.int32),
         "boxes": np.array([[[1.0, 2.0, 9.0, 11.0], [0, 0, 0, 0]],
                            [[4.0, 4.0, 15.0, 14.0], [0.0, 9.0, 6.0, 16.0]]], np.float32),
         "box_classes": np.array([[2, -1], [0, 1]], np.int32),
         "mask": np.array([True, False])}
BATCH["label"][0, 0, 0] = 255


def _outputs(logits, **features):
  return models.Outputs(logits=jnp.asarray(logits), features=features)


def _apply(term, s, t, batch=BATCH):
  params, state = term.init(jax.random.key(0), s, t, batch)
  loss, _, metrics = term.apply(params, state, s, t, batch, 0)
  return params, loss, metrics


def test_segmentation_terms_are_their_losses_over_kept_examples():
  s, t = _outputs(SEG_S, stage2=FEAT_S), _outputs(SEG_T, stage2=FEAT_T)
  _, loss, _ = _apply(objectives.pixel_kd(temperature=2.0, label_key="label"), s, t)
  np.testing.assert_allclose(loss, losses.pixel_kd(SEG_S, SEG_T, BATCH["label"],
                                                   temperature=2.0)[0], rtol=1e-6)
  _, loss, _ = _apply(objectives.channel_wise_distillation(temperature=4.0), s, t)
  np.testing.assert_allclose(loss, losses.channel_wise_distillation(SEG_S, SEG_T)[0], rtol=1e-6)
  _, loss, _ = _apply(objectives.pairwise_similarity_distillation(
      student="stage2", teacher="stage2", nodes=(1, 2)), s, t)
  np.testing.assert_allclose(loss, losses.pairwise_similarity_distillation(
      FEAT_S, FEAT_T, nodes=(1, 2))[0], rtol=1e-6)


def test_detection_terms_are_their_losses_over_kept_examples():
  s = _outputs(HEAT_S, box_logits=BOX_S, neck=FEAT_S)
  t = _outputs(HEAT_T, box_logits=BOX_T, neck=FEAT_T)
  _, loss, _ = _apply(objectives.heatmap_kd(temperature=2.0), s, t)
  np.testing.assert_allclose(loss, losses.heatmap_kd(HEAT_S, HEAT_T, temperature=2.0)[0],
                             rtol=1e-6)
  _, loss, _ = _apply(objectives.localization_distillation(temperature=10.0), s, t)
  expected = losses.localization_distillation(BOX_S, BOX_T, losses.teacher_confidence(HEAT_T))
  np.testing.assert_allclose(loss, expected[0], rtol=1e-6)
  _, loss, metrics = _apply(objectives.point_detection(stride=4.0), s, None)
  heat, edges, weight = losses.point_targets(BATCH["boxes"], BATCH["box_classes"], grid=(4, 4),
                                             stride=4.0, num_classes=3, n_bins=5)
  focal = losses.heatmap_focal_loss(HEAT_S, heat)[0]
  dfl = losses.distribution_focal_loss(BOX_S, edges, weight)[0]
  np.testing.assert_allclose([metrics["heatmap"], metrics["box"], loss], [focal, dfl, focal + dfl],
                             rtol=1e-6)


def test_feature_imitation_trains_an_adapter_on_the_object_region():
  s, t = _outputs(HEAT_S, neck=FEAT_S), _outputs(HEAT_T, neck=FEAT_T)
  term = objectives.feature_imitation(student="neck", teacher="neck", stride=8.0,
                                      anchor_sizes=(8.0,))
  params, loss, metrics = _apply(term, s, t)
  assert {a.shape for a in jax.tree.leaves(params["adapter"])} == {(5, 6), (6,)}  # 5 -> 6 channels
  mask = losses.imitation_mask(BATCH["boxes"], BATCH["box_classes"] >= 0, grid=(2, 2),
                               stride=8.0, anchor_sizes=(8.0,))
  assert float(metrics["region"]) == pytest.approx(float(jnp.mean(mask)))
  assert np.isfinite(loss) and float(loss) > 0


def test_needs_and_the_registry():
  kinds = objectives.term_kinds()
  for name in ("pixel_kd", "channel_wise_distillation", "pairwise_similarity_distillation",
               "point_detection", "heatmap_kd", "localization_distillation", "feature_imitation"):
    assert kinds[name].ctor is getattr(objectives, name)
  assert objectives.point_detection().needs == objectives.Needs(
      student=("box_logits",), batch=("boxes", "box_classes"), teacher_outputs=False)
  assert objectives.localization_distillation().needs.teacher == ("box_logits",)
  fi = objectives.feature_imitation(student="neck", teacher="stage2")
  assert (fi.needs.student, fi.needs.teacher, fi.needs.batch) == (
      ("neck",), ("stage2",), ("boxes", "box_classes"))
  assert objectives.pixel_kd(label_key="label").needs.batch == ("label",)
  with pytest.raises(ValueError, match="psi must be in"):
    objectives.feature_imitation(psi=0.0)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    objectives.localization_distillation(temperature=-1.0)


@pytest.mark.slow  # Compiles a whole step of two detectors: minutes on a loaded 2-core machine.
def test_a_point_detector_distils_inside_distill_step():
  def build(width, taps, seed):
    module = zoo.PointDetector(num_classes=3, width=width, n_bins=5)
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 1)))
    return models.from_linen(module, variables, taps=taps)

  taps = ("box_logits", "pre_logits")
  teacher, student = build(4, taps, 0), build(2, taps, 1)
  objective = objectives.combine({
      "det": objectives.point_detection(),
      "heatmap_kd": objectives.heatmap_kd(),
      "ld": (objectives.localization_distillation(), 0.25),
      "imitation": (objectives.feature_imitation(anchor_sizes=(8.0,)), 0.1)})
  batch = {"image": _rng.uniform(0, 1, (B, 16, 16, 1)).astype(np.float32),
           "boxes": BATCH["boxes"], "box_classes": BATCH["box_classes"]}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.adam(1e-2), rng=jax.random.key(2),
                                    example_batch=batch)
  new_state, metrics = jax.jit(kdjax.distill_step)(state, batch)
  for key in ("loss", "det", "heatmap_kd", "ld", "imitation", "det/heatmap", "agreement"):
    assert np.isfinite(metrics[key]), key
  assert float(metrics["imitation/region"]) > 0
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params,
                       state.params)
  assert all(v > 0 for v in jax.tree.leaves(moved["objective"]["imitation"]))  # the adapter
  with pytest.raises(ValueError, match="'box_classes'"):
    jax.jit(kdjax.distill_step)(new_state, {k: v for k, v in batch.items() if k != "box_classes"})

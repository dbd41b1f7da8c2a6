"""The dense zoo: output shapes and taps of the segmenter and the detector, and box decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses, models
from kdjax.models import zoo


def _shapes(name, input_shape, taps, **kw):
  module = zoo.DENSE_MODELS[name](num_classes=5, **kw)
  x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  model = models.from_linen(module, variables, taps=taps, example_input=x)
  out, _ = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=True, rng=None),
                          model.params, model.model_state, x)
  return out, variables


def test_segmentation_unet_keeps_the_resolution_and_names_its_stages():
  taps = ("stem", "stage1", "stage2", "decoder2", "decoder1", "pre_logits")
  out, variables = _shapes("unet_tiny", (16, 12, 1), taps)
  assert out.logits.shape == (2, 16, 12, 5) and out.logits.dtype == jnp.float32
  assert out.features["stage2"].shape == (2, 4, 3, 32)
  assert out.features["decoder1"].shape == (2, 16, 12, 8)
  small = models.param_count(_shapes("unet_small", (16, 12, 1), ())[1]["params"])
  assert small > 3 * models.param_count(variables["params"])  # a teacher, a student


def test_point_detector_outputs_heatmap_and_edge_distributions():
  out, _ = _shapes("point_detector_tiny", (24, 16, 1), ("box_logits", "neck", "pre_logits"),
                   n_bins=6)
  assert out.logits.shape == (2, 6, 4, 5)
  assert out.features["box_logits"].shape == (2, 6, 4, 4, 6)
  assert out.features["neck"].shape == out.features["pre_logits"].shape == (2, 6, 4, 32)


def test_dense_models_refuse_sizes_they_cannot_halve():
  module = zoo.DENSE_MODELS["unet_tiny"](num_classes=3)
  with pytest.raises(ValueError, match="multiples of 4"):
    module.init(jax.random.key(0), jnp.zeros((1, 10, 8, 1)))


def test_decode_detections_reads_peaks_and_edge_distributions():
  heat = np.full((1, 4, 5, 3), -8.0, np.float32)
  heat[0, 2, 3, 1] = 3.0  # a peak: cell (2, 3), class 1
  heat[0, 2, 2, 1] = 1.0  # its neighbour, suppressed by the 3x3 peak test
  heat[0, 0, 0, 2] = 0.5  # a second, weaker peak
  box = np.zeros((1, 4, 5, 4, 6), np.float32)
  for e, k in enumerate((1, 2, 3, 1)):
    box[0, 2, 3, e, k] = 60.0  # sure of distances (1, 2, 3, 1) cells
  boxes, scores, classes = zoo.decode_detections(heat, box, stride=4, max_detections=3)
  # Cell (2, 3) has its centre at (14, 10); the edges lie 4, 8, 12 and 4 pixels away.
  np.testing.assert_allclose(boxes[0, 0], [10.0, 2.0, 26.0, 14.0], atol=1e-4)
  np.testing.assert_allclose(scores[0, :2], jax.nn.sigmoid(jnp.array([3.0, 0.5])), rtol=1e-6)
  assert classes[0, :2].tolist() == [1, 2]
  assert float(scores[0, 2]) < 1e-3  # the suppressed neighbour is not the third detection


def test_decode_inverts_the_training_targets():
  # A detector that outputs exactly its targets decodes back to the boxes (up to the clipping).
  boxes = np.array([[[5.0, 6.0, 15.0, 20.0], [26.0, 4.0, 40.0, 16.0]]], np.float32)
  classes = np.array([[2, 0]], np.int32)
  heat, edges, weight = losses.point_targets(boxes, classes, grid=(6, 12), stride=4.0,
                                             num_classes=3, n_bins=8)
  logits = jnp.where(heat >= 1.0, 5.0, -5.0)
  lo = jnp.floor(edges)
  frac = edges - lo
  onehot = lambda k: jax.nn.one_hot(k.astype(jnp.int32), 8)
  probs = (1 - frac)[..., None] * onehot(lo) + frac[..., None] * onehot(jnp.minimum(lo + 1, 7))
  out, scores, cls = zoo.decode_detections(logits, jnp.log(probs + 1e-12), stride=4.0,
                                           max_detections=2)
  order = np.argsort(np.asarray(cls[0]))
  np.testing.assert_allclose(np.asarray(out[0])[order], boxes[0][::-1], atol=1e-3)
  assert weight.shape == (1, 6, 12)

"""Export of dense models: a segmenter's per-pixel logits and a detector's raw heads, written to
ONNX and StableHLO and checked against JAX in onnxruntime and ``jax.export``."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from kdjax import export, models
from kdjax.models import zoo

pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

SHAPE = (16, 16, 1)


@functools.lru_cache(maxsize=None)
def _model(name, num_classes, taps=()):
  return models.create(f"kdjax.models.zoo:{name}", num_classes=num_classes, input_shape=SHAPE,
                       rng=jax.random.key(0), taps=taps, width=2)


def _batches(labels, seed=0):
  """Two batches of 6 images, the last 2 rows of the second padding (``mask`` False)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(2):
    mask = np.ones(6, bool)
    if i:
      mask[-2:] = False
    batch = {"image": rng.uniform(size=(6, *SHAPE)).astype(np.float32), "mask": mask}
    if labels is not None:
      batch["label"] = rng.integers(0, labels, (6, *SHAPE[:2])).astype(np.int32)
    out.append(batch)
  return out


def _session(path):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_a_segmenter_exports_per_pixel_logits_scored_per_pixel(tmp_path):
  model = _model("SegmentationUNet", 5)
  batches = _batches(labels=5)
  entry = export.export_model(model, name="seg", export_dir=tmp_path, input_shape=SHAPE,
                              batches=batches)
  assert entry["outputs"] == ["logits"] and entry["max_abs_diff"] <= 1e-5
  session = _session(entry["onnx"])
  x = np.concatenate([b["image"] for b in batches])
  (logits,) = session.run(None, {"image": x})
  want = np.asarray(export.inference_fn(model)(x))
  assert logits.shape == want.shape == (12, 16, 16, 5)
  np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)
  # Accuracy of the real images' pixels (the padded rows' pixels left out), by the artifact.
  real = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  pixels = (logits.argmax(-1) == labels)[real]
  assert entry["accuracy"] == pytest.approx(pixels.mean(), abs=1e-12)
  assert entry["formats"]["stablehlo"]["accuracy"] == entry["accuracy"]


def test_a_detector_exports_its_raw_heads_in_order(tmp_path):
  model = _model("PointDetector", 3, taps=("box_logits",))
  batches = _batches(labels=None)
  entry = export.export_model(model, name="det", export_dir=tmp_path, input_shape=SHAPE,
                              batches=batches, outputs=("box_logits",))
  assert entry["outputs"] == ["logits", "box_logits"]
  assert entry["accuracy"] is None and entry["jax_accuracy"] is None  # Boxes have no top-1.
  assert entry["max_abs_diff"] <= 1e-5
  session = _session(entry["onnx"])
  assert [o.name for o in session.get_outputs()] == ["logits", "box_logits"]
  x = batches[0]["image"]
  heatmap, box_logits = session.run(None, {"image": x})
  out, _ = model.apply(model.params, model.model_state, x, train=False, rng=None)
  assert heatmap.shape == (6, 4, 4, 3) and box_logits.shape == (6, 4, 4, 4, 8)
  np.testing.assert_allclose(heatmap, out.logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(box_logits, out.features["box_logits"], atol=1e-5, rtol=0)
  # The boxes decoded from the artifact's heads are the model's.
  for got, want in zip(zoo.decode_detections(heatmap, box_logits),
                       zoo.decode_detections(out.logits, out.features["box_logits"])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=0)


def test_an_output_the_model_does_not_tap_is_refused():
  with pytest.raises(ValueError, match=r"outputs \['box_logits'\] are not taps of the model"):
    untapped = dataclasses.replace(_model("PointDetector", 3, taps=("box_logits",)), taps=())
    export.inference_fn(untapped, outputs=("box_logits",))

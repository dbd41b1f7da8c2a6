"""The export manifest names the classes of the model's outputs."""
import json

import jax
import numpy as np

from kdjax import export, models

SHAPE = (4, 4, 1)


def _batches(num_classes):
  rng = np.random.default_rng(0)
  return [{"image": rng.uniform(size=(8, *SHAPE)).astype(np.float32),
           "label": rng.integers(0, num_classes, 8).astype(np.int32),
           "mask": np.ones(8, bool)}]


def test_manifest_carries_class_names(tmp_path):
  model = models.create("mlp", num_classes=3, input_shape=SHAPE, rng=jax.random.key(0),
                        hidden=(4,))
  entry = export.export_model(model, name="student_kd", export_dir=tmp_path, input_shape=SHAPE,
                              batches=_batches(3), formats=("stablehlo",),
                              class_names=("cat", "dog", "bird"))
  assert entry["class_names"] == ["cat", "dog", "bird"]
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["student_kd"]["class_names"] == ["cat", "dog", "bird"]
  # A dataset without names: recorded as null, so readers need not guess.
  entry = export.export_model(model, name="other", export_dir=tmp_path, input_shape=SHAPE,
                              batches=_batches(3), formats=("stablehlo",))
  assert entry["class_names"] is None

"""Export: StableHLO reloaded without kdjax, ONNX in onnxruntime, int8 accuracy, manifest."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import compress, data, export, models

pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")
pytest.importorskip("qwix")

SHAPE = (8, 8, 1)


def random_batches(n_batches=2, batch_size=16, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(n_batches):
    mask = np.ones(batch_size, bool)
    mask[-3:] = False  # padded rows, as make_eval_batches' last batch has
    batches.append({"image": rng.uniform(size=(batch_size, *SHAPE)).astype(np.float32),
                    "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
                    "mask": mask})
  return batches


def test_float_zoo_model_roundtrip(tmp_path):
  # cnn_small: convolutions, BatchNorm, max pooling, global pooling, a dense head.
  model = models.create("cnn_small", num_classes=4, input_shape=SHAPE, rng=jax.random.key(0),
                        width=4)
  batches = random_batches()
  entry = export.export_model(model, name="student_kd", export_dir=tmp_path, input_shape=SHAPE,
                              batches=batches)
  assert entry["input_shape"] == [None, *SHAPE] and entry["input_dtype"] == "float32"
  assert entry["max_abs_diff"] <= 1e-4
  assert entry["formats"]["onnx"]["max_abs_diff"] <= 1e-4
  assert entry["formats"]["stablehlo"]["max_abs_diff"] <= 1e-4
  assert entry["accuracy"] == entry["jax_accuracy"] and entry["latency_ms"] > 0
  assert entry["size_bytes"] == os.path.getsize(tmp_path / "student_kd.onnx")
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["student_kd"]["onnx"] == str(tmp_path / "student_kd.onnx")

  # The StableHLO artifact, reloaded and run by a process that never imports kdjax, with a
  # batch size it was not traced with (the batch dimension is symbolic).
  x = np.concatenate([b["image"] for b in batches])[:7]
  np.save(tmp_path / "x.npy", x)
  script = textwrap.dedent(f"""
      import sys
      import jax, numpy as np
      exported = jax.export.deserialize(bytearray(open({str(tmp_path / 'student_kd.stablehlo')!r}, 'rb').read()))
      np.save({str(tmp_path / 'y.npy')!r}, np.asarray(exported.call(np.load({str(tmp_path / 'x.npy')!r}))))
      assert not any(m == 'kdjax' or m.startswith('kdjax.') for m in sys.modules), 'kdjax imported'
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
  subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
  want = np.asarray(export.inference_fn(model)(x))
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-4, rtol=0)


def digits_arrays(split):
  batches = data.make_eval_batches("digits", batch_size=512, split=split)
  images = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"])] for b in batches])
  labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"])] for b in batches])
  return images, labels


@pytest.mark.slow  # trains a digits MLP and converts it (about 25 s of CPU)
def test_int8_onnx_accuracy_matches_jax(tmp_path):
  images, labels = digits_arrays("train")
  module = models.get_model("mlp", num_classes=10, hidden=(32,))
  model = models.from_linen(module, module.init(jax.random.key(0), images[:1]))
  tx = optax.adam(3e-2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      def loss(p):
        logits = module.apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    with jax.numpy_dtype_promotion("standard"):
      opt_state = tx.init(params)
    return jax.lax.scan(step, (params, opt_state), None, length=60)[0][0]

  trained = models.Model(apply=model.apply, params=train(model.params), name="mlp")
  int8 = compress.ptq(trained, module, example_input=images[:1])
  eval_batches = data.make_eval_batches("digits", batch_size=128)
  entry = export.export_model(int8, name="student_kd_int8", export_dir=tmp_path,
                              input_shape=SHAPE, batches=eval_batches, formats=("onnx",))
  assert entry["stablehlo"] is None
  assert entry["jax_accuracy"] > 0.8  # a trained model, so agreement is meaningful
  assert abs(entry["accuracy"] - entry["jax_accuracy"]) <= 0.003
  assert entry["max_abs_diff"] <= 1e-4
  # The kernels are stored as int8 initializers, not float32 ones.
  onnx = pytest.importorskip("onnx")
  graph = onnx.load(tmp_path / "student_kd_int8.onnx").graph
  sizes = {(int(np.prod(t.dims)), t.data_type) for t in graph.initializer}
  for kernel in (64 * 32, 32 * 10):
    assert (kernel, onnx.TensorProto.INT8) in sizes
    assert (kernel, onnx.TensorProto.FLOAT) not in sizes


def test_standardization_lives_inside_the_artifact_function():
  model = models.create("mlp", num_classes=3, input_shape=SHAPE, rng=jax.random.key(0),
                        hidden=(8,))
  x = jax.random.uniform(jax.random.key(1), (4, *SHAPE))
  mean, std = (0.3,), (0.2,)
  got = export.inference_fn(model, mean=mean, std=std)(x)
  want = model.apply(model.params, {}, (x - 0.3) / 0.2, train=False, rng=None)[0].logits
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="both"):
    export.inference_fn(model, mean=mean)


def test_manifest_merges_runs(tmp_path):
  export.write_manifest(tmp_path, {"student_kd": {"accuracy": 0.9}})
  export.write_manifest(tmp_path, {"student_kd_int8": {"accuracy": 0.8}})
  assert json.loads((tmp_path / "manifest.json").read_text()) == {
      "student_kd": {"accuracy": 0.9}, "student_kd_int8": {"accuracy": 0.8}}
  with pytest.raises(ValueError, match="formats"):
    export.export_model(None, name="x", export_dir=tmp_path, input_shape=SHAPE, batches=[],
                        formats=("tflite",))

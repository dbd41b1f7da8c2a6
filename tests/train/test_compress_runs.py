"""configs/compress.py on the engine: pruned and int8 students, exports checked in their runtimes."""
import json
import os

import numpy as np
import pytest

from kdjax import train
from tests.train.conftest import REPO, kill_when, run_cli, train_losses

pytest.importorskip("qwix")
pytest.importorskip("onnxruntime")

CONFIG = os.path.join(REPO, "configs", "compress.py")
SHORT = ["--config.total_steps=40", "--config.teacher.total_steps=40", "--config.compress.steps=20",
         "--config.compress.prune_end=10", "--config.compress.prune_frequency=2",
         "--config.eval_every=0", "--config.checkpoint_every=5", "--config.log_every=1",
         "--config.progress_bar=False", "--config.checked_steps=0"]


def run(workdir, *extra):
  run_cli(f"--config={CONFIG}", f"--workdir={workdir}", *SHORT, *extra)
  return train.read_results(workdir)


@pytest.mark.slow
def test_compress_config_prunes_quantizes_and_exports(tmp_path):
  workdir = str(tmp_path / "run")
  results = run(workdir)
  assert list(results) == ["teacher", "student", "student_kd", "student_kd_pruned",
                           "student_kd_int8", "export"]
  pruned = results["student_kd_pruned"]
  # 80% of each pruned layer, rounded to whole weights: 0.8 to within one weight in 10^4.
  assert pruned["sparsity"] >= 0.8 and pruned["nonzero"] < 0.3 * pruned["params"]
  assert "ptq_accuracy" in results["student_kd_int8"]
  with open(os.path.join(workdir, "export", "manifest.json")) as f:
    manifest = json.load(f)
  assert set(manifest) == {"student_kd", "student_kd_pruned", "student_kd_int8"}
  assert manifest["student_kd"]["max_abs_diff"] <= 1e-4
  # The export run's entry: one member per exported run, as its manifest entry says.
  members = {m["run"]: m for m in results["export"]["members"]}
  assert set(members) == set(manifest)
  for name, member in members.items():
    assert member["accuracy"] == manifest[name]["accuracy"]
    assert member["size_bytes"] == manifest[name]["size_bytes"]
  for name, entry in manifest.items():
    assert os.path.getsize(os.path.join(workdir, "export", f"{name}.onnx")) == entry["size_bytes"]
  # The int8 artifact's predictions, in onnxruntime, against the run's own evaluation.
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from kdjax import data  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(os.path.join(workdir, "export", "student_kd_int8.onnx"))
  correct = count = 0
  for batch in data.make_eval_batches("digits", batch_size=368):
    logits = session.run(None, {session.get_inputs()[0].name: batch["image"]})[0]
    real = batch["mask"].astype(bool)
    correct += int(np.sum((np.argmax(logits, -1) == batch["label"])[real]))
    count += int(real.sum())
  assert abs(correct / count - manifest["student_kd_int8"]["accuracy"]) <= 0.003


@pytest.mark.slow
def test_pruned_run_resumes_exactly_after_sigkill(tmp_path):
  args = ["--config.export.formats=()", "--config.compress.quantization=none"]
  reference = str(tmp_path / "reference")
  run(reference, *args)
  workdir = str(tmp_path / "killed")
  kill_when(os.path.join(workdir, "student_kd_pruned", "checkpoints", "5"),
            f"--config={CONFIG}", f"--workdir={workdir}", *SHORT, *args)
  assert "student_kd_pruned" not in train.read_results(workdir)
  results = run(workdir, *args)
  want = train.read_results(reference)
  assert results["student_kd_pruned"]["sparsity"] == want["student_kd_pruned"]["sparsity"]
  assert (results["student_kd_pruned"]["sparsity_layers"] ==
          want["student_kd_pruned"]["sparsity_layers"])
  a, b = train_losses(workdir, "student_kd_pruned"), train_losses(reference, "student_kd_pruned")
  assert sorted(a) == sorted(b) == list(range(1, 21))
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-6)
  assert results["student_kd_pruned"]["accuracy"] == want["student_kd_pruned"]["accuracy"]
  # The final state itself, optimizer state (the pruning masks) included, is the same.
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  final = [ocp.PyTreeCheckpointer().restore(
      os.path.join(w, "student_kd_pruned", "checkpoints", "20", "state")) for w in (workdir, reference)]
  jax.tree.map(np.testing.assert_array_equal, final[0]["opt_state"], final[1]["opt_state"])
  jax.tree.map(np.testing.assert_array_equal, final[0]["params"], final[1]["params"])

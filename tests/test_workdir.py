"""kdjax.workdir: the workdir contract's names and readers, without JAX."""
import json
import os
import subprocess
import sys
import textwrap

from kdjax import workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importable_and_usable_without_jax(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({"teacher": {"accuracy": 0.9}}))
  script = textwrap.dedent(f"""
      import importlib.util, sys
      sys.modules["jax"] = None  # any "import jax" now fails
      spec = importlib.util.spec_from_file_location(
          "contract", {os.path.join(REPO, "kdjax", "workdir.py")!r})
      contract = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(contract)
      assert contract.read_results({str(tmp_path)!r}) == {{"teacher": {{"accuracy": 0.9}}}}
      assert not any(m == "jax" or m.startswith("jax.") for m in sys.modules
                     if sys.modules[m] is not None)
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_metrics_reader_skips_a_torn_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.5}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert workdir.read_metrics(path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.5}]
  assert workdir.read_metrics(tmp_path / "missing.jsonl") == []


def test_paths_and_missing_files(tmp_path):
  assert workdir.checkpoint_dir("/w", "student") == os.path.join("/w", "student", "checkpoints")
  assert workdir.metrics_path("/w", "teacher") == os.path.join("/w", "teacher", "metrics.jsonl")
  assert workdir.read_results(tmp_path) == {} and workdir.read_config(tmp_path) == {}
  (tmp_path / "config.json").write_text("{not json")
  try:
    workdir.read_config(tmp_path)
  except workdir.UnreadableFile as e:
    assert "config.json" in str(e)
  else:
    raise AssertionError("a broken config.json was read")


def test_rows_and_gains_come_from_the_entries():
  results = {"teacher": {"accuracy": 0.9},
             "base": {"accuracy": 0.70},
             "kd": {"accuracy": 0.75, "baseline": "base"},
             "pair": {"accuracy": 0.6, "accuracy_0": 0.5, "accuracy_1": 0.7,
                      "members": [{"model": "a"}, {"model": "b"}]},
             "export": {"members": [{"run": "kd", "accuracy": 0.74, "size_bytes": 10}]}}
  rows = dict(workdir.result_rows(results))
  assert list(rows) == ["teacher", "base", "kd", "pair", "pair[0]", "pair[1]", "export",
                        "export[kd]"]
  assert rows["pair[1]"] == {"model": "b", "accuracy": 0.7}
  assert rows["export[kd]"]["accuracy"] == 0.74
  (run, base, key, gain), = workdir.distillation_gains(results)
  assert (run, base, key) == ("kd", "base", "accuracy") and abs(gain - 0.05) < 1e-12

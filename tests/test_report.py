"""kdjax report: report.png (learning curves) and report.md (results, mean ± std over seeds)."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from kdjax import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ("teacher", "student", "student_kd")


def _write_workdir(path, seed, accuracy, *, lm=False, extra_config=None):
  """A finished workdir by the contract: results.json, config.json, <run>/metrics.jsonl."""
  os.makedirs(path)
  config = {"seed": seed, "batch_size": 64, "log_every": 10, "student": {"model": "mlp"},
            **(extra_config or {})}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  results = {}
  for i, run in enumerate(RUNS):
    entry = {"accuracy": accuracy[run], "top5": 1.0, "macro_f1": accuracy[run] - 0.01,
             "ece": 0.05 + 0.01 * i, "params": 1000 * (i + 1), "time_s": 10.0 + seed,
             "model": "cnn_small" if run == "teacher" else "mlp", "steps": 40}
    if run != "teacher":
      entry["agreement"] = 0.9
    if run == "student_kd":
      entry["baseline"] = "student"  # A distilled run names its baseline run.
    if lm:
      entry["perplexity"] = 5.0 + i + seed
    results[run] = entry
    os.makedirs(os.path.join(path, run))
    with open(os.path.join(path, run, "metrics.jsonl"), "w") as f:
      for step in range(10, 50, 10):
        f.write(json.dumps({"step": step, "loss": 2.0 / step + i + 0.01 * seed, "kd": 0.1,
                            "learning_rate": 0.1}) + "\n")
        if step % 20 == 0:
          record = {"step": step, "split": "eval", "eval": True,
                    "accuracy": accuracy[run] * step / 40, "count": 100}
          if lm:
            record["perplexity"] = 10.0 - step / 10
          f.write(json.dumps(record) + "\n")
      f.write('{"step": 50, "loss"')  # A torn last line, as a killed run leaves it.
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(results, f)
  return results


def _png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  assert head[12:16] == b"IHDR"
  return struct.unpack(">II", head[16:24])


def _table(md):
  """``{run: {column: cell}}`` from the markdown table."""
  lines = [l for l in md.splitlines() if l.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  return {cells[0]: dict(zip(header, cells)) for cells in
          ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])}


def test_one_workdir(tmp_path):
  workdir = str(tmp_path / "w0")
  accuracy = {"teacher": 0.95, "student": 0.80, "student_kd": 0.85}
  _write_workdir(workdir, 0, accuracy)
  png, md = report.write_report([workdir])
  assert png == os.path.join(workdir, "report.png") and md == os.path.join(workdir, "report.md")
  width, height = _png_size(png)
  assert 800 <= width <= 2000 and 300 <= height <= 800  # Two panels side by side.
  text = open(md).read()
  rows = _table(text)
  assert list(rows) == list(RUNS)
  assert rows["student_kd"]["accuracy"] == "0.8500" and rows["teacher"]["accuracy"] == "0.9500"
  assert rows["teacher"]["agreement"] == "-" and rows["student"]["agreement"] == "0.9000"
  assert rows["student"]["params"] == "2,000" and rows["student"]["time_s"] == "10.0"
  assert "perplexity" not in rows["student"]
  assert "Distillation gain (student_kd − student accuracy): +0.0500." in text
  assert "Warning" not in text  # The teacher was trained here, not loaded.
  assert "![learning curves](report.png)" in text


def test_seeds_give_mean_and_sample_std(tmp_path):
  accs = [{"teacher": 0.9 + 0.01 * s, "student": 0.7 + 0.02 * s, "student_kd": 0.8 + 0.05 * s}
          for s in range(3)]
  dirs = [str(tmp_path / f"seed{s}") for s in range(3)]
  for s, (d, acc) in enumerate(zip(dirs, accs)):
    _write_workdir(d, s, acc, lm=True)
  _, md = report.write_report(dirs)
  text = open(md).read()
  rows = _table(text)
  for run in RUNS:
    values = np.array([a[run] for a in accs])
    mean, std = values.mean(), np.sqrt(np.sum((values - values.mean()) ** 2) / (len(values) - 1))
    assert rows[run]["accuracy"] == f"{mean:.4f} ± {std:.4f}"
    assert rows[run]["seeds"] == "3"
  # perplexity: 5 + i + seed over seeds 0, 1, 2 -> mean 6 + i, std 1.
  assert rows["student"]["perplexity"] == "7.0000 ± 1.0000"
  assert rows["teacher"]["time_s"] == "11.0 ± 1.0"
  # LM workdirs compare perplexity, lower is better: student_kd's is 1 higher for every seed,
  # so the gain is -1 (worse), not +1.
  assert ("(student perplexity − student_kd perplexity; lower perplexity is better, so + means "
          "student_kd is better): -1.0000 ± 0.0000 over 3 seeds") in text
  assert "3 workdirs (seeds 0, 1, 2)" in text and "configs differ" not in text
  assert "bands ±1 standard deviation" in text
  assert md == os.path.join(dirs[0], "seeds_report.md")
  width, _ = _png_size(dirs[0] + "/seeds_report.png")
  assert width >= 3 * 400  # loss, accuracy and perplexity panels.
  assert "![learning curves](seeds_report.png)" in text
  for d in dirs:  # No workdir's own report is written or replaced.
    assert not os.path.exists(d + "/report.png")


def test_seeds_report_never_replaces_a_workdirs_own_report(tmp_path):
  dirs = [str(tmp_path / f"seed{s}") for s in range(2)]
  for s, d in enumerate(dirs):
    _write_workdir(d, s, {"teacher": 0.9, "student": 0.7, "student_kd": 0.8})
  own_png, _ = report.write_report(dirs[:1])
  before = open(own_png, "rb").read()
  png, md = report.write_report(dirs)
  assert png != own_png and open(own_png, "rb").read() == before
  out = str(tmp_path / "summary")
  png, md = report.write_report(dirs, out)
  assert png == os.path.join(out, "seeds_report.png") and os.path.isfile(md)


def test_the_figure_names_its_band(tmp_path, monkeypatch):
  titles = []
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  original = matplotlib.figure.Figure.suptitle
  monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                      lambda self, t, **kw: titles.append(t) or original(self, t, **kw))
  dirs = [str(tmp_path / f"seed{s}") for s in range(2)]
  for s, d in enumerate(dirs):
    _write_workdir(d, s, {"teacher": 0.9, "student": 0.7, "student_kd": 0.8})
  report.write_report(dirs)
  assert "bands: ±1 standard deviation" in titles[-1]


def test_single_points_are_drawn_and_empty_series_not_listed(tmp_path, monkeypatch):
  # One training record per run (a smoke run logs once): a line of one point is invisible,
  # so it gets a marker; a run with no finite point is not in the legend.
  workdir = str(tmp_path / "w")
  _write_workdir(workdir, 0, {"teacher": 0.9, "student": 0.7, "student_kd": 0.8})
  for run in RUNS:
    with open(os.path.join(workdir, run, "metrics.jsonl"), "w") as f:
      if run != "teacher":
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
      else:
        f.write(json.dumps({"step": 4, "loss": float("nan")}) + "\n")
      f.write(json.dumps({"step": 4, "eval": True, "accuracy": 0.5}) + "\n")
  drawn = {}
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  original = matplotlib.axes.Axes.legend

  def legend(self, *args, **kwargs):
    lines = [l for l in self.get_lines() if not l.get_label().startswith("_")]
    drawn[self.get_title()] = {l.get_label(): (len(l.get_xdata()), l.get_marker())
                               for l in lines}
    return original(self, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
  report.write_report([workdir])
  loss = drawn[report.PANELS[0][2]]
  assert set(loss) == {"student", "student_kd"}  # The teacher has no finite loss.
  assert all(n == 1 and marker == "o" for n, marker in loss.values())


def test_a_loaded_teacher_weaker_than_the_student_alone_is_named(tmp_path):
  workdir = str(tmp_path / "w")
  _write_workdir(workdir, 0, {"teacher": 0.6, "student": 0.7, "student_kd": 0.65})
  results = json.load(open(os.path.join(workdir, "results.json")))
  results["teacher"]["checkpoint"] = "/elsewhere/teacher"
  json.dump(results, open(os.path.join(workdir, "results.json"), "w"))
  _, md = report.write_report([workdir])
  assert "**Warning:** the loaded teacher `teacher` scores below `student` trained alone" in (
      open(md).read())


def test_different_configs_are_noted(tmp_path):
  acc = {"teacher": 0.9, "student": 0.7, "student_kd": 0.8}
  _write_workdir(str(tmp_path / "a"), 0, acc)
  _write_workdir(str(tmp_path / "b"), 1, acc, extra_config={"batch_size": 32})
  _, md = report.write_report([str(tmp_path / "a"), str(tmp_path / "b")])
  assert "configs differ in more than the seed: `batch_size`" in open(md).read()


def test_curves_keep_the_last_record_per_step_and_split_eval():
  records = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "loss": 1.5},
             {"step": 20, "split": "eval", "eval": True, "accuracy": 0.5},
             {"step": 30, "loss": float("nan")}]
  out = report.curves(records)
  np.testing.assert_array_equal(out[("train", "loss")][0], [10, 20])
  np.testing.assert_array_equal(out[("train", "loss")][1], [3.0, 1.5])
  np.testing.assert_array_equal(out[("eval", "accuracy")][1], [0.5])
  assert ("train", "eval") not in out


def test_errors_are_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / "missing")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("kdjax: error: ") and "not a directory" in err and err.count("\n") == 1
  assert report.main([str(tmp_path)]) == 1
  assert "no results.json" in capsys.readouterr().err


@pytest.mark.slow  # Starts Python processes that import kdjax (and JAX).
@pytest.mark.parametrize("command", [["-m", "kdjax.main", "report"], ["-m", "kdjax.report"]])
def test_command_line(tmp_path, command):
  workdir = str(tmp_path / "w")
  _write_workdir(workdir, 0, {"teacher": 0.9, "student": 0.7, "student_kd": 0.8})
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, *command, workdir], env=env, cwd=REPO, text=True,
                       capture_output=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  assert f"report: {workdir}/report.png" in out.stdout
  _png_size(os.path.join(workdir, "report.png"))

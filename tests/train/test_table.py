"""The table printed at the end of a run: signed gains, weak teachers, 100 columns at most."""
from kdjax import workdir
from kdjax.train import table


def _entry(**values):
  return {"model": "mlp", "params": 610, "time_s": 1.0, **values}


def test_lm_gain_is_positive_only_when_perplexity_drops():
  worse = {"teacher": _entry(perplexity=4.0), "student": _entry(perplexity=10.0),
           "student_kd": _entry(perplexity=10.8, baseline="student")}
  (run, base, key, gain), = workdir.distillation_gains(worse)
  assert (run, base, key) == ("student_kd", "student", "perplexity")
  assert abs(gain - (10.0 - 10.8)) < 1e-12
  text = table.results_table(worse)
  assert ("distillation gain (student_kd vs student, perplexity, lower is better): -0.8000 "
          "(worse)") in text
  better = {**worse, "student_kd": _entry(perplexity=9.5, baseline="student")}
  assert "lower is better): +0.5000 (better)" in table.results_table(better)


def test_accuracy_gain():
  results = {"student": _entry(accuracy=0.70), "student_kd": _entry(accuracy=0.75,
                                                                    baseline="student")}
  assert "distillation gain (student_kd - student accuracy): +0.0500" in (
      table.results_table(results))


def test_a_loaded_teacher_below_the_student_alone_is_named():
  results = {"teacher": _entry(accuracy=0.40, checkpoint="/other/teacher"),
             "student": _entry(accuracy=0.62),
             "student_kd": _entry(accuracy=0.55, baseline="student")}
  text = table.results_table(results)
  assert ("warning: the loaded teacher 'teacher' (accuracy 0.4000) scores below 'student' "
          "trained alone (0.6200):") in text
  assert "check what /other/teacher was trained on" in text
  # A strong loaded teacher, or a weak one trained in the workdir, is not flagged.
  results["teacher"]["accuracy"] = 0.9
  assert "warning" not in table.results_table(results)
  results["teacher"] = _entry(accuracy=0.4)
  assert "warning" not in table.results_table(results)
  # Language models: a higher perplexity is worse.
  lm = {"teacher": _entry(perplexity=20.0, checkpoint="/t"), "student": _entry(perplexity=9.0),
        "student_kd": _entry(perplexity=9.5, baseline="student")}
  assert workdir.weak_teachers(lm) == [("teacher", "student", "perplexity", 20.0, 9.0)]
  # Dense tasks: judged by mean IoU and COCO mAP, not by the pixel accuracy they also carry.
  seg = {"teacher": _entry(miou=0.5, accuracy=0.99, checkpoint="/t"),
         "student": _entry(miou=0.7, accuracy=0.95),
         "student_kd": _entry(miou=0.72, accuracy=0.96, baseline="student")}
  assert workdir.weak_teachers(seg) == [("teacher", "student", "miou", 0.5, 0.7)]
  seg["teacher"]["miou"] = 0.9
  assert workdir.weak_teachers(seg) == []
  det = {"teacher": _entry(map50=0.9, map=0.3, checkpoint="/t"),
         "student": _entry(map50=0.8, map=0.5),
         "student_kd": _entry(map50=0.85, map=0.55, baseline="student")}
  assert workdir.weak_teachers(det) == [("teacher", "student", "map", 0.3, 0.5)]


def test_compression_tables_fit_100_columns():
  results = {
      "teacher": _entry(accuracy=0.9, top5=1.0, macro_f1=0.9, ece=0.01),
      "student_kd": _entry(accuracy=0.8, top5=1.0, macro_f1=0.8, ece=0.02, agreement=0.85),
      "student_kd_pruned": _entry(accuracy=0.79, top5=1.0, macro_f1=0.78, ece=0.02,
                                  agreement=0.84, sparsity=0.5, nonzero=313),
      "student_kd_int8": _entry(accuracy=0.78, top5=1.0, macro_f1=0.77, ece=0.03,
                                agreement=0.83, ptq_accuracy=0.77),
      "export": {"time_s": 2.0, "members": [
          {"run": "student_kd_pruned", "accuracy": 0.79, "max_abs_diff": 1e-6,
           "size_bytes": 6336}]},
  }
  text = table.results_table(results)
  lines = text.splitlines()
  assert max(map(len, lines)) <= 100, text
  # Nothing is lost: every value is in one of the two parts.
  for cell in ("0.5000", "313", "0.7700", "1.00e-06", "6,336", "610"):
    assert cell in text, cell
  second = lines[lines.index("") + 1].split()
  assert second == ["run", "accuracy", "ptq_accuracy", "sparsity", "max_abs_diff", "nonzero",
                    "size_bytes"]
  # A narrow table stays one table.
  small = {"student": _entry(accuracy=0.7)}
  assert "" not in table.results_table(small).splitlines()

"""The one table of term kinds, ``Needs.teacher_outputs`` and ``needs_live_teacher``."""
import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest

from kdjax import losses, objectives


@pytest.mark.slow
def test_importing_objectives_alone_gives_every_kind():
  # A fresh interpreter: no other kdjax package imported, nothing registered by side effect.
  code = ("import sys; from kdjax import objectives; k = objectives.term_kinds(); "
          "assert {'crd', 'vid', 'review_kd', 'cached_kd', 'kd', 'ofd', 'srd'} <= set(k), k; "
          "assert 'kdjax.strategies' not in sys.modules and 'kdjax.teacher_cache' not in "
          "sys.modules; print(len(k))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]


def test_table_rows_and_dataset_args():
  kinds = objectives.term_kinds()
  assert {"crd", "vid", "review_kd", "cached_kd", "kd", "ofd", "srd"} <= set(kinds)
  assert kinds["crd"].ctor is objectives.crd and kinds["crd"].dataset_args == ("num_data",)
  assert kinds["ofd"].dataset_args == ("teacher_model",)
  assert kinds["vid"].ctor is objectives.vid and kinds["review_kd"].ctor is objectives.review_kd
  for kind in kinds.values():  # every constructor is keyword-only, as configs call them
    params = inspect.signature(kind.ctor).parameters.values()
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params), kind.name
  with pytest.raises(ValueError, match="not values a run can supply"):
    objectives.register_term_kind("mine", objectives.kd, dataset_args=("labels",))


def test_losses_terms_rows_become_kinds_with_the_losses_signature():
  kinds = objectives.term_kinds()
  for name in losses.TERMS:
    params = inspect.signature(kinds[name].ctor).parameters
    loss_params = inspect.signature(getattr(losses, name)).parameters
    own = {n for n, p in loss_params.items() if p.kind == inspect.Parameter.KEYWORD_ONLY
           and p.default is not inspect.Parameter.empty and n != "mask"}
    assert own <= set(params) and {"student", "mask_key"} <= set(params), name


def test_needs_merge_and_teacher_outputs():
  a = objectives.Needs(student=("s1",), batch=("label",), teacher_outputs=False)
  b = objectives.Needs(teacher=("t1",), batch=("label", "index"), teacher_outputs=False)
  merged = a.merge(b)
  assert merged == objectives.Needs(("s1",), ("t1",), ("label", "index"), False)
  assert a.merge(objectives.Needs()).teacher_outputs  # any term reading the teacher
  assert objectives.cross_entropy().needs.teacher_outputs is False
  assert objectives.cached_kd().needs.teacher_outputs is False
  assert objectives.kd().needs.teacher_outputs is True
  combined = objectives.combine({"ce": objectives.cross_entropy(), "kd": objectives.cached_kd()})
  assert combined.needs.teacher_outputs is False
  assert combined.needs.batch == ("label", objectives.TOPK_VALUES_KEY,
                                  objectives.TOPK_INDICES_KEY)


def test_needs_live_teacher_asks_each_term():
  spec = {"ce": {"kind": "cross_entropy", "weight": 0.1},
          "cached": {"kind": "cached_kd", "temperature": 2.0},
          "kd": {"kind": "kd", "weight": 0.9},
          "hint": {"kind": "fitnets", "student": "a", "teacher": "b"},
          "crd": {"kind": "crd"},  # needs num_data from the run: counts as reading the teacher
          "typo": {"kind": "nope"}}
  assert objectives.needs_live_teacher(spec) == ("kd", "hint", "crd", "typo")
  assert objectives.needs_live_teacher({k: spec[k] for k in ("ce", "cached")}) == ()
  terms = {"ce": objectives.cross_entropy(), "kd": (objectives.kd(), 0.5)}
  assert objectives.needs_live_teacher(terms) == ("kd",)
  assert objectives.needs_live_teacher(objectives.cached_kd()) == ()
  assert objectives.needs_live_teacher(objectives.combine(terms)) == ("objective",)
  needs = objectives.needs_of(spec)
  assert needs["hint"] == objectives.Needs(student=("a",), teacher=("b",))
  assert needs["crd"] is None and needs["typo"] is None
  assert needs["cached"].batch == (objectives.TOPK_VALUES_KEY, objectives.TOPK_INDICES_KEY)


def test_strategies_hold_only_multi_model_strategies():
  strategies = importlib.import_module("kdjax.strategies")
  assert not {"crd", "vid", "review_kd", "nce_loss", "vid_nll", "adaptive_avg_pool",
              "hierarchical_context_loss"} & set(strategies.__all__)
  assert losses.adaptive_avg_pool(np.ones((1, 4, 4, 2), np.float32), 2).shape == (1, 2, 2, 2)

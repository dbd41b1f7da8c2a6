"""docs/design.md's worked example, "How to add a loss", run as it is written there.

The example's loss module and its lines for ``kdjax/losses/__init__.py`` are read from the page:
the fast test checks the loss against a numpy formula and its lifted term; the slow one copies
the package, makes exactly the two documented changes (one new file, one edited) and trains a
student on the new config kind.
"""
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kdjax import objectives
from kdjax.models import Outputs

REPO = pathlib.Path(__file__).resolve().parents[2]


def example_blocks() -> tuple[str, list[str]]:
  """The loss module and the lines for losses/__init__.py, from docs/design.md."""
  text = (REPO / "docs" / "design.md").read_text()
  section = text[text.index("**How to add a loss.**"):text.index("**How to add a term.**")]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 2, "the example has a loss module and the lines for __init__.py"
  return blocks[0], [line for line in blocks[1].splitlines() if line.strip()]


def load_example_module() -> types.ModuleType:
  module = types.ModuleType("kdjax.losses._hellinger")
  module.__package__ = "kdjax.losses"
  exec(compile(example_blocks()[0], "docs/design.md:_hellinger.py", "exec"), module.__dict__)
  return module


def np_hellinger(s, t, temperature):
  def softmax(z):
    e = np.exp(z / temperature - np.max(z / temperature, -1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  return 1.0 - np.sum(np.sqrt(softmax(s.astype(np.float64)) * softmax(t.astype(np.float64))), -1)


def test_the_example_loss_and_its_lifted_term():
  hellinger = load_example_module().hellinger
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(hellinger)(s, t, temperature=2.0), np_hellinger(s, t, 2.0),
                             rtol=1e-5, atol=1e-7)
  mask = np.array([1, 0, 1, 1, 0], bool)
  padded = s.copy()
  padded[1] = np.nan
  got = hellinger(padded, t, mask=mask)
  np.testing.assert_allclose(got, np.where(mask, np_hellinger(s, t, 1.0), 0.0), rtol=1e-5,
                             atol=1e-7)
  check_grads(lambda a, b: hellinger(a, b, temperature=2.0),
              (s.astype(np.float64), t.astype(np.float64)), order=1, modes=("rev",))

  ctor = objectives.term_constructor(hellinger)
  assert list(ctor.__signature__.parameters) == ["student", "teacher", "mask_key",
                                                 "temperature"]
  term = ctor(temperature=2.0)
  assert term.needs == objectives.Needs(teacher_outputs=True)
  loss, _, _ = term.apply({}, {}, Outputs(jnp.asarray(s), {}), Outputs(jnp.asarray(t), {}),
                          {"mask": mask}, 0)
  np.testing.assert_allclose(float(loss), np_hellinger(s, t, 2.0)[mask].mean(), rtol=1e-5)
  with pytest.raises(TypeError, match="takes"):
    ctor(temprature=2.0)


_TRAIN = textwrap.dedent("""
    import numpy as np, optax
    from kdjax import losses, objectives
    from tests import helpers

    kind = objectives.term_kinds()["hellinger"]
    objective = objectives.combine({"h": kind.ctor(temperature=2.0)})
    teacher, student = helpers.tap_mlp(1), helpers.tap_mlp(2)
    _, history = helpers.distill(student, teacher, objective, helpers.batch(16),
                                 tx=optax.adam(0.02), steps=25, metric="h")
    assert losses.hellinger.__module__ == "kdjax.losses._hellinger"
    assert np.all(np.isfinite(history)) and history[-1] < 0.5 * history[0], history
    print("trained", history[0], history[-1])
    """)


@pytest.mark.slow
def test_adding_the_example_touches_two_source_files_and_trains(tmp_path):
  module_src, init_lines = example_blocks()
  shutil.copytree(REPO / "kdjax", tmp_path / "kdjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  (tmp_path / "kdjax" / "losses" / "_hellinger.py").write_text(module_src)
  init = tmp_path / "kdjax" / "losses" / "__init__.py"
  lines = init.read_text().splitlines()
  import_line, all_line, terms_line = init_lines
  last_import = max(i for i, l in enumerate(lines) if l.startswith("from kdjax.losses."))
  lines.insert(last_import + 1, import_line)
  all_start = next(i for i, l in enumerate(lines) if l.startswith("__all__"))
  all_end = next(i for i in range(all_start, len(lines)) if lines[i] == ")")
  lines.insert(all_end, all_line)
  terms_start = next(i for i, l in enumerate(lines) if l.startswith("TERMS"))
  terms_end = next(i for i in range(terms_start, len(lines)) if lines[i] == "}")
  lines.insert(terms_end, terms_line)
  init.write_text("\n".join(lines) + "\n")

  changed = sorted(
      str(p.relative_to(tmp_path)) for p in (tmp_path / "kdjax").rglob("*.py")
      if not (REPO / p.relative_to(tmp_path)).exists()
      or (REPO / p.relative_to(tmp_path)).read_text() != p.read_text())
  assert changed == ["kdjax/losses/__init__.py", "kdjax/losses/_hellinger.py"]

  (tmp_path / "tests").mkdir()
  for name in ("__init__.py", "helpers.py"):
    shutil.copy(REPO / "tests" / name, tmp_path / "tests" / name)
  out = subprocess.run([sys.executable, "-c", _TRAIN], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={"PYTHONPATH": str(tmp_path),
                                                    "PATH": "/usr/bin:/bin",
                                                    "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "trained" in out.stdout

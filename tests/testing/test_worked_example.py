"""docs/testing.md's worked example, run as the page says: its files, its command, its count."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "testing.md")


def doc_files():
  """{relative path: source} of the doc's Python blocks that start with '# <path>.py'."""
  with open(DOC) as f:
    text = f.read()
  files = {}
  for block in re.findall(r"```python\n(.*?)```", text, re.S):
    first = block.splitlines()[0]
    match = re.fullmatch(r"# (\S+\.py)", first.strip())
    if match:
      files[match.group(1)] = block
  return text, files


def test_the_doc_names_its_files():
  _, files = doc_files()
  assert sorted(files) == ["conftest.py", "my_losses.py", "tests/test_my_losses.py"]


@pytest.mark.slow
def test_worked_example_runs_as_written(tmp_path):
  text, files = doc_files()
  for rel, source in files.items():
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "PYTHONPATH")}
  # `pytest tests/test_my_losses.py` from the project root, as the doc says: the pytest script
  # (not `python -m pytest`, which would put the current directory on sys.path itself), with
  # kdjax importable as it is after `pip install kdjax`.
  env["PYTHONPATH"] = ROOT
  script = os.path.join(os.path.dirname(sys.executable), "pytest")
  command = [script] if os.path.exists(script) else [sys.executable, "-m", "pytest"]
  result = subprocess.run(
      [*command, "tests/test_my_losses.py", "-q", "-p", "no:cacheprovider"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
  summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert re.fullmatch(r"11 passed in .*", summary), summary
  assert "runs eleven tests, all passing" in text

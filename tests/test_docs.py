"""The documents state one quickstart time: README.md and docs/training.md quote the same run."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# "68 s end to end": the measured wall time of the README's quickstart command.
_TIME = re.compile(r"(\d+(?:\.\d+)?)\s*s\s+end\s+to\s+end")


def _quickstart_times(path: str) -> list[str]:
  return _TIME.findall(" ".join((ROOT / path).read_text().split()))


def test_readme_and_training_doc_give_the_same_quickstart_time():
  readme, training = _quickstart_times("README.md"), _quickstart_times("docs/training.md")
  assert len(readme) == 1, f"README.md should state the quickstart time once, found {readme}"
  assert training == readme, (f"docs/training.md says {training} s, README.md {readme} s: "
                              "quote one measurement")

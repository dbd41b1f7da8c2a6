"""The public API: every namespace has ``__all__``, docs/api.md lists exactly those names, and
``import kdjax`` binds every subpackage.

``python tests/test_api.py`` rewrites docs/api.md from the ``__all__`` lists and the first line
of each docstring (edit the descriptions by hand afterwards if you like; the test compares names).
"""
import ast
import importlib
import pathlib
import re
import sys
import textwrap
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
API_MD = REPO / "docs" / "api.md"
# Every public namespace, in the order docs/api.md lists them (lowest layer first).
NAMESPACES = ("kdjax", "kdjax.losses", "kdjax.objectives", "kdjax.models", "kdjax.data",
              "kdjax.metrics", "kdjax.step", "kdjax.testing", "kdjax.parallel",
              "kdjax.strategies", "kdjax.lm", "kdjax.compress", "kdjax.teacher_cache",
              "kdjax.export", "kdjax.train", "kdjax.configs", "kdjax.plan", "kdjax.report",
              "kdjax.workdir")
# The namespaces imported by this test (the rest are checked from their source alone).
LIBRARY = ("kdjax", "kdjax.losses", "kdjax.objectives", "kdjax.models", "kdjax.data",
           "kdjax.step", "kdjax.testing", "kdjax.parallel", "kdjax.strategies", "kdjax.lm",
           "kdjax.compress", "kdjax.teacher_cache")


def _source(namespace: str) -> pathlib.Path:
  path = REPO / pathlib.Path(*namespace.split("."))
  return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def static_all(namespace: str) -> tuple[str, ...] | None:
  """The literal ``__all__`` of a namespace's source (``a + b`` of literals too), or None."""
  for node in ast.parse(_source(namespace).read_text()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                            for t in node.targets):
      names: list[str] = []

      def collect(value):
        if isinstance(value, ast.BinOp):
          collect(value.left)
          collect(value.right)
        elif isinstance(value, (ast.Tuple, ast.List)):
          names.extend(e.value for e in value.elts if isinstance(e, ast.Constant))
        elif isinstance(value, ast.Name):  # e.g. kdjax's _LAZY tuple
          names.extend(_module_tuple(namespace, value.id))

      collect(node.value)
      return tuple(names)
  return None


def _module_tuple(namespace: str, name: str) -> list[str]:
  for node in ast.parse(_source(namespace).read_text()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return [e.value for e in node.value.elts]
  return []


def documented() -> dict[str, list[str]]:
  """``{namespace: [names]}`` as docs/api.md lists them."""
  out: dict[str, list[str]] = {}
  current = None
  for line in API_MD.read_text().splitlines():
    heading = re.match(r"^## `?(kdjax[\w.]*)`?\s*$", line)
    if heading:
      current = out.setdefault(heading.group(1), [])
    elif current is not None and (item := re.match(r"^- `([A-Za-z_]\w*)`", line)):
      current.append(item.group(1))
  return out


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_namespace_has_all(namespace):
  names = static_all(namespace)
  assert names, f"{_source(namespace)} has no __all__; list its public names there"
  assert len(set(names)) == len(names), f"{namespace}.__all__ lists a name twice"


def test_api_md_lists_exactly_the_public_names():
  docs = documented()
  assert list(docs) == list(NAMESPACES), (
      "docs/api.md has one section per namespace, in order; regenerate it with "
      "`python tests/test_api.py`")
  for namespace in NAMESPACES:
    listed, public = set(docs[namespace]), set(static_all(namespace) or ())
    assert listed == public, (
        f"docs/api.md's {namespace} section and its __all__ differ: missing from the docs "
        f"{sorted(public - listed)}, not public {sorted(listed - public)}; regenerate it with "
        "`python tests/test_api.py`")


@pytest.mark.parametrize("namespace", LIBRARY)
def test_all_names_resolve_and_cover_the_public_attributes(namespace):
  module = importlib.import_module(namespace)
  lazy = getattr(module, "_LAZY", ())  # kdjax's subpackages bound on first use
  assert all(_source(f"kdjax.{n}").exists() for n in lazy), lazy
  missing = [n for n in module.__all__ if n not in lazy and not hasattr(module, n)]
  assert not missing, f"{namespace}.__all__ names {missing}, which it does not define"
  package = hasattr(module, "__path__")
  public = {k for k, v in vars(module).items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType)
            # A plain module's imports (typing names, classes it uses) are not its API.
            and (package or getattr(v, "__module__", namespace) == namespace)}
  unlisted = sorted(public - set(module.__all__) - {"annotations"})
  assert not unlisted, f"{namespace} has public names {unlisted} missing from its __all__"


def test_import_kdjax_binds_every_subpackage():
  import kdjax  # pylint: disable=g-import-not-at-top
  for namespace in LIBRARY[1:]:
    sub = namespace.split(".", 1)[1]
    assert getattr(kdjax, sub) is importlib.import_module(namespace)
  assert set(static_all("kdjax")) >= {n.split(".", 1)[1] for n in NAMESPACES[1:]}


def test_no_public_name_has_two_implementations():
  """A name public in several namespaces is one object (a re-export), never a second copy."""
  seen: dict[str, tuple[str, object]] = {}
  clashes = []
  for namespace in LIBRARY[1:]:
    module = importlib.import_module(namespace)
    for name in module.__all__:
      obj = getattr(module, name)
      if not callable(obj) or isinstance(obj, types.ModuleType):
        continue
      if name in seen and seen[name][1] is not obj:
        first = seen[name][0]
        # A loss and the objective term built on it share their name by design.
        if {first, namespace} != {"kdjax.losses", "kdjax.objectives"}:
          clashes.append(f"{first}.{name} and {namespace}.{name}")
      seen.setdefault(name, (namespace, obj))
  assert not clashes, f"public names implemented twice: {clashes}"


def _summary(obj) -> str:
  if isinstance(obj, (str, int, float, tuple, dict, frozenset)):
    return "constant"
  doc = (getattr(obj, "__doc__", None) or "").strip()
  return doc.splitlines()[0].rstrip() if doc else ""


def write_api_md() -> None:
  intro = ("Every public name, by namespace, one line each: each namespace's `__all__`, lowest "
           "layer first (see docs/design.md for the layers). `tests/test_api.py` checks this "
           "page against the `__all__` lists; `python tests/test_api.py` regenerates it.")
  lines = ["# kdjax API", "", *textwrap.wrap(intro, 100), ""]
  for namespace in NAMESPACES:
    lines += [f"## {namespace}", ""]
    try:
      module = importlib.import_module(namespace)
    except Exception:  # pylint: disable=broad-except
      module = None
    for name in sorted(static_all(namespace) or (), key=str.lower):
      try:
        summary = _summary(getattr(module, name)) if module is not None else ""
      except Exception:  # pylint: disable=broad-except  (a namespace that does not import now)
        summary = ""
      lines.append(f"- `{name}`" + (f": {summary}" if summary else ""))
    lines.append("")
  API_MD.write_text("\n".join(lines))


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  write_api_md()

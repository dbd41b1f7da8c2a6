"""kdjax's packages form layers: no import cycle between them, and no import goes up a layer.

Layers, lowest first (docs/design.md): losses -> objectives -> step -> parallel, strategies, lm,
compress, teacher_cache -> export -> train -> main, plan, report. The imports are read from the
source (every ``import`` statement, also those inside functions), so a lazy import cannot hide
a cycle. A package may import packages of its own layer or below; the cycle check covers the
imports inside one layer.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "kdjax"

# Each top-level module or package of kdjax, by layer (lowest first).
LAYERS = (
    ("losses", "data", "metrics", "workdir", "_checkpointable", "_native_stderr"),
    ("objectives", "models"),
    ("step", "_checked", "testing"),
    ("parallel", "strategies", "lm", "compress", "teacher_cache"),
    ("export",),
    ("train",),
    ("main", "plan", "report", "configs"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(path: pathlib.Path) -> str:
  """The top-level module or package of kdjax that ``path`` belongs to."""
  return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_units(path: pathlib.Path) -> dict[str, int]:
  """``{unit: line}`` for every kdjax unit ``path`` imports (absolute or relative)."""
  package = list(path.relative_to(ROOT.parent).parts[:-1])  # where relative imports start
  found = {}
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      names = [module] + [f"{module}.{alias.name}" for alias in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "kdjax" and len(parts) > 1 and parts[1] in UNITS:
        found.setdefault(parts[1], node.lineno)
  return found


UNITS = frozenset(p.name.removesuffix(".py") for p in ROOT.iterdir()
                  if (p.is_dir() and (p / "__init__.py").exists()) or
                  (p.suffix == ".py" and p.name != "__init__.py"))


def import_graph() -> dict[str, dict[str, str]]:
  """``{unit: {imported unit: 'file:line' of one import that makes the edge}}``."""
  graph: dict[str, dict[str, str]] = {unit: {} for unit in UNITS}
  for path in sorted(ROOT.rglob("*.py")):
    if path.parent == ROOT and path.name == "__init__.py":
      continue  # kdjax/__init__.py binds every subpackage; it is above all layers.
    src = _unit(path)
    for dst, line in _imported_units(path).items():
      if dst != src:
        graph[src].setdefault(dst, f"{path.relative_to(ROOT.parent)}:{line}")
  return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
  """One import cycle as ``[a, b, ..., a]``, or ``None``."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, {})):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_every_package_has_a_layer():
  missing = sorted(UNITS - set(LAYER))
  assert not missing, (f"kdjax units {missing} have no layer; add each to LAYERS in "
                       "tests/test_layering.py (and to the layers in docs/design.md)")


def upward_imports(graph: dict[str, dict[str, str]]) -> list[str]:
  return [f"{src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]}) at {where}"
          for src, targets in sorted(graph.items()) for dst, where in sorted(targets.items())
          if src in LAYER and dst in LAYER and LAYER[dst] > LAYER[src]]


def test_no_import_goes_up_a_layer():
  upward = upward_imports(import_graph())
  assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_packages():
  graph = import_graph()
  cycle = find_cycle(graph)
  if cycle:
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    pytest.fail("import cycle between kdjax packages:\n" + "\n".join(steps))


def test_the_checks_catch_a_cycle_and_an_upward_import():
  graph = {"losses": {"objectives": "x.py:1"}, "objectives": {"losses": "y.py:2"}, "step": {}}
  assert find_cycle(graph) == ["losses", "objectives", "losses"]
  assert find_cycle({"losses": {}, "objectives": {"losses": "y.py:2"}}) is None
  assert upward_imports({"export": {"train": "e.py:3"}, "train": {"export": "t.py:4"}}) == [
      "export (layer 4) imports train (layer 5) at e.py:3"]
  assert upward_imports({"objectives": {"losses": "o.py:1"}}) == []

"""The data and recipe docs point to sections that exist and to the TensorFlow-free CIFAR-100."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["examples/cifar100/README.md", "docs/recipes.md", "docs/models.md", "kdjax/data/README.md"]


def _read(rel):
  with open(os.path.join(ROOT, rel)) as f:
    return f.read()


def _slugs(text):
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
  headings = re.findall(r"^#+ (.+)$", text, re.M)
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS)
def test_section_references_exist(doc):
  text = _read(doc)
  base = os.path.dirname(doc)
  # Markdown links with an anchor: [..](path.md#anchor) or [..](#anchor).
  for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
    path = os.path.normpath(os.path.join(base, target)) if target else doc
    assert os.path.exists(os.path.join(ROOT, path)), f"{doc}: link to missing {path}"
    assert anchor in _slugs(_read(path)), f"{doc}: {path} has no section '#{anchor}'"
  # Prose references: (`docs/x.md`, "Section name").
  for target, section in re.findall(r"`(docs/[\w.]+\.md)`, \"([^\"]+)\"", text):
    assert re.search(rf"^#+ {re.escape(section)}\s*$", _read(target), re.M), (
        f"{doc}: {target} has no section {section!r}")


def test_recipes_point_to_the_official_archive():
  for doc in ("docs/recipes.md", "examples/cifar100/README.md"):
    text = _read(doc)
    assert "cifar100-python:" in text and "cifar-100-python.tar.gz" in text, doc
    assert "www.cs.toronto.edu/~kriz/cifar" in text, doc

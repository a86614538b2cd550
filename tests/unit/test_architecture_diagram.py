"""docs/architecture.dot names exactly the packages and modules that exist, so the
diagram in docs/architecture.md cannot silently rot; and the committed SVG was rendered
from the current .dot (every box of the .dot is in it)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import csi_py

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(csi_py.__file__).parent
DOT = REPO / "docs" / "architecture.dot"
SVG = REPO / "docs" / "architecture.svg"
# Boxes that hold top-level modules of csi_py/ (the others are named after their
# package: "core", "linux_filesystems" for linux/filesystems/, ...).
TOP_LEVEL_BOXES = {"entry", "server", "config", "support"}
_BOX = re.compile(r'^\s*(\w+)\s*\[label="((?:[^"\\]|\\.)*)"', re.M)


def boxes() -> dict[str, list[str]]:
    """Each box of the .dot: its id and the module names its label lists (the lines
    after the title line)."""
    found = {}
    for box, label in _BOX.findall(DOT.read_text()):
        lines = label.split("\\n")[1:]
        found[box] = [name for line in lines for name in re.split(r"\s*·\s*|\s+", line) if name]
    return found


def modules_on_disk() -> dict[str, set[str]]:
    """{box id: module names} as the tree has them."""
    tree: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "_proto" or rel.name == "__init__.py":
            continue
        box = "_".join(rel.parts[:-1]) or "top"
        tree.setdefault(box, set()).add(rel.stem)
    return tree


def test_every_package_has_a_box_listing_exactly_its_modules():
    drawn = boxes()
    tree = modules_on_disk()
    top = tree.pop("top")
    assert {box: sorted(drawn.get(box, [])) for box in tree} == \
        {box: sorted(names) for box, names in tree.items()}
    assert sorted(n for box in TOP_LEVEL_BOXES for n in drawn[box]) == sorted(top)
    assert set(drawn) == set(tree) | TOP_LEVEL_BOXES, "a box names no package"


def test_no_module_is_drawn_twice():
    names = [(box, n) for box, ns in boxes().items() for n in ns]
    assert len(names) == len(set(names))


def test_the_svg_is_rendered_from_this_dot():
    text = html.unescape(SVG.read_text())
    missing = [f"{box}: {name}" for box, names in boxes().items() for name in names
               if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text)]
    assert missing == [], "run hack/diagrams"
    # Each box is a <g class="node"> titled with its id.
    assert set(re.findall(r"<title>(\w+)</title>", text)) >= set(boxes())


def test_the_checks_see_the_boxes():
    drawn = boxes()
    assert "volumes" in drawn["core"] and "ext4" in drawn["linux_filesystems"]
    assert len(drawn) >= 10

"""The shape of csi_py/'s modules: each says its job in its first docstring sentence,
and none grows past the size a reader can hold (the generated code aside). The few
still over it are listed with why; an entry no longer needed fails too, so the list
only shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

import csi_py

PACKAGE = Path(csi_py.__file__).parent
MAX_LINES = 420
# Modules allowed over MAX_LINES, each with the reason (none today: a module that grows
# past it is split by job instead).
TOO_LONG: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)


def test_every_module_says_its_job_first():
    silent = []
    for path in modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.split(".")[0]) < 15:
            silent.append(str(path.relative_to(PACKAGE)))
    assert silent == []


def test_no_module_is_too_long():
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in modules()}
    long = {name: n for name, n in long.items() if n > MAX_LINES}
    assert sorted(long) == sorted(TOO_LONG), long

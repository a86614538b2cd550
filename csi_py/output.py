"""How the CLI prints records: aligned tables for people (kubectl's layout), JSON and
YAML for scripts. Pure functions of their input; nothing here talks to a driver."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "yaml", "wide")


@dataclass(frozen=True)
class Column:
    """A table column: its header, the record key it shows, and whether only `-o wide`
    shows it."""

    header: str
    key: str
    wide: bool = False


def table(columns: Sequence[Column], records: Sequence[dict[str, Any]], wide: bool = False
          ) -> str:
    """Records as a table with a header row and columns three spaces apart, like kubectl.
    Missing or empty values show as `<none>`. Ends without a newline."""
    shown = [c for c in columns if wide or not c.wide]
    rows = [[c.header for c in shown]]
    for record in records:
        rows.append([_cell(record.get(c.key)) for c in shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(shown))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def render(data: Any, fmt: str) -> str:
    """`data` as JSON or YAML text (no trailing newline). Raises ValueError for another
    format."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if fmt == "yaml":
        return "\n".join(_yaml_lines(data, 0))
    raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")


# A string YAML reads back as the same string when written bare: no leading indicator,
# no ": " or " #", and not a word YAML 1.1 readers take for a bool, null or number.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+-]*(?: [A-Za-z0-9_./@+-]+)*")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a valid double-quoted YAML scalar


def _yaml_lines(data: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(data, dict):
        if not data:
            return [pad + "{}"]
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_yaml_lines(value, indent + 2))
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(value)}")
        return lines
    if isinstance(data, list):
        if not data:
            return [pad + "[]"]
        lines = []
        for item in data:
            inner = _yaml_lines(item, indent + 2)
            lines.append(pad + "- " + inner[0].lstrip())
            lines.extend(inner[1:])
        return lines
    return [pad + _scalar(data)]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)

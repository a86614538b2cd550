"""The mount table: /proc/self/mountinfo parsed into MountEntry records (escapes decoded),
and MountTable, one read of it parsed only where asked. Pure parsing: the reading is
Mounter's (mount.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
# The most of a mount table read: far above what a node with thousands of mounts has.
MAX_TABLE = 64 << 20


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (see proc(5)), with escapes decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]
    optional_fields: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        """True when this mount (not necessarily its superblock) is read-only."""
        return "ro" in self.mount_options


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo (mangle() in
    # fs/proc_namespace.c). Work on bytes so a path that is not valid UTF-8
    # round-trips through os.fsencode/os.fsdecode unchanged.
    if "\\" not in field:
        return field  # the common case, and the hot path of every publish
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(field))
    return os.fsdecode(raw)


def _escape(path: str) -> str:
    """A path as mountinfo prints it (the inverse of _unescape)."""
    raw = os.fsencode(path)
    for ch in b"\\ \t\n":
        raw = raw.replace(bytes([ch]), b"\\%03o" % ch)
    return os.fsdecode(raw)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of a mountinfo file into entries, in file order (a mount that
    is stacked over another comes after it).

    Handles any number of optional fields before the ``-`` separator and the octal
    escapes \\040 \\011 \\012 \\134. Pure function; raises ValueError on a malformed
    line (naming its line number).
    """
    entries: list[MountEntry] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            fs_type, source, super_opts = fields[sep + 1 : sep + 4]
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major=int(major),
                    minor=int(minor),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    mount_options=tuple(fields[5].split(",")),
                    fs_type=_unescape(fs_type),
                    source=_unescape(source),
                    super_options=tuple(_unescape(o) for o in super_opts.split(",")),
                    optional_fields=tuple(fields[6:sep]),
                )
            )
        except (ValueError, IndexError):
            raise ValueError(f"malformed mountinfo line {lineno}: {line!r}") from None
    return entries


class MountTable:
    """One read of the mount table, parsed only as far as it is asked: the entries at
    a path, or those whose line names a word (a device), so a request that looks at a
    few paths on a node with thousands of mounts parses a few lines. Immutable; the
    same answers every time it is asked."""

    def __init__(self, text: str | None = None,
                 entries: Sequence[MountEntry] | None = None) -> None:
        self._lines = [ln for ln in text.split("\n") if ln] if text is not None else None
        self._text = text or ""
        self._entries = tuple(entries) if entries is not None else None

    @classmethod
    def of_entries(cls, entries: Iterable[MountEntry]) -> MountTable:
        """A table of entries already parsed (e.g. an in-memory fake's)."""
        return cls(entries=tuple(entries))

    def all(self) -> list[MountEntry]:
        """Every entry, in mountinfo order. Raises ValueError on a malformed line."""
        if self._entries is None:
            self._entries = tuple(parse_mountinfo(self._text))
        return list(self._entries)

    def at(self, path: str) -> list[MountEntry]:
        """The entries whose mount point is `path` after :func:`normalize` (symlinks
        are NOT resolved), bottom first: the last one is the visible (top) mount."""
        norm = normalize(path)
        if self._lines is None or self._entries is not None:
            return [m for m in self.all() if m.mount_point == norm]
        wanted = _escape(norm)
        if " " + wanted + " " not in self._text:
            return []
        return parse_mountinfo("\n".join(
            ln for ln in self._lines if ln.split(" ", 5)[4:5] == [wanted]))

    def naming(self, words: Iterable[str]) -> list[MountEntry]:
        """The entries whose line contains one of `words` (e.g. "loop3", which a mount
        of /dev/loop3 names as its source or, bound onto a file, as its root), in
        mountinfo order; a superset: the caller matches the entries exactly."""
        words = [w for w in words if w]
        if not words:
            return []
        if self._lines is None or self._entries is not None:
            return self.all()
        return parse_mountinfo("\n".join(
            ln for ln in self._lines if any(w in ln for w in words)))


def normalize(path: str) -> str:
    """``os.path.normpath`` plus collapsing the leading ``//`` POSIX allows to keep.
    Symlinks are not resolved (the kernel reports mount points resolved, so a path
    through a symlink will not match: resolve it yourself if you mean to)."""
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm

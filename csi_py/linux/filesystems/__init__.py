"""The table of supported filesystems: one instance per class (ext4, xfs, btrfs), the
only place their facts live. The filesystem service, config, Probe and validation all
read it."""

from __future__ import annotations

from collections.abc import Iterable

from csi_py.linux import exec as _exec
from csi_py.linux.filesystems.base import Filesystem
from csi_py.linux.filesystems.btrfs import PROBE_BYTES, Btrfs
from csi_py.linux.filesystems.ext4 import EXT_TYPES, Ext4
from csi_py.linux.filesystems.xfs import Xfs

__all__ = [
    "ALWAYS_NEEDED", "EXT_TYPES", "FILESYSTEMS", "MIN_FS_BYTES", "PROBE_BYTES", "SUPPORTED",
    "Filesystem", "for_type", "missing_tools", "tools",
]  # fmt: skip

FILESYSTEMS: dict[str, Filesystem] = {fs.name: fs for fs in (Ext4(), Xfs(), Btrfs())}
# The fs_types a volume may have, in the order help texts list them.
SUPPORTED: tuple[str, ...] = tuple(FILESYSTEMS)
# The smallest volume csi-py makes with each filesystem.
MIN_FS_BYTES: dict[str, int] = {name: fs.min_bytes for name, fs in FILESYSTEMS.items()}
# detect() falls back to blkid for whatever the in-process probe does not know.
ALWAYS_NEEDED = ("blkid",)

_BY_TYPE: dict[str, Filesystem] = {t: fs for fs in FILESYSTEMS.values() for t in fs.handles}


def for_type(fs_type: str) -> Filesystem | None:
    """The class that grows and checks ``fs_type`` ("ext3" -> ext4's), or None. Pure."""
    return _BY_TYPE.get(fs_type)


def tools(names: Iterable[str] = SUPPORTED) -> list[str]:
    """Every external tool the driver may run for the filesystems ``names`` (each one
    in SUPPORTED), blkid first, without repeats. Pure."""
    found = list(ALWAYS_NEEDED)
    for name in names:
        found.extend(FILESYSTEMS[name].tools)
    return list(dict.fromkeys(found))


def missing_tools(names: Iterable[str] = SUPPORTED) -> list[str]:
    """The tools of :func:`tools` that are not installed (looked up now). Idempotent."""
    return [tool for tool in tools(names) if _exec.find_tool(tool) is None]

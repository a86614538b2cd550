"""Find and remove loop devices and mounts under one directory, and only there.

Tests share the machine with other runs (helpers, CI, a demo), so every leak check
and every cleanup is scoped to the test's own directory.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import Any

from csi_py.linux.mountinfo import MountEntry, normalize

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def entries_under(mounts: Any, path: str) -> list[MountEntry]:
    """The entries of ``mounts.list_mounts()`` (a real Mounter or the fake) at ``path``
    or anywhere below it, deepest mount point first and, at one path, the upper
    (later) mount first: the order to unmount them in. Read-only."""
    norm = normalize(path)
    prefix = norm.rstrip("/") + "/"
    found = [(i, m) for i, m in enumerate(mounts.list_mounts())
             if m.mount_point == norm or m.mount_point.startswith(prefix)]
    found.sort(key=lambda im: (-im[1].mount_point.count("/"), -im[0]))
    return [m for _, m in found]


def _decode(field: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def mounts_under(root: str) -> list[str]:
    """Mount points at or below `root`, in mount order."""
    root = root.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = _decode(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return found


def _backing_files() -> Iterator[tuple[str, str]]:
    """(loopN, backing file) of each attached loop device, as sysfs shows them."""
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as fh:
                yield name, fh.read().strip()
        except OSError:
            continue


def loops_under(root: str) -> list[str]:
    """Loop devices whose backing file is below `root`."""
    root = root.rstrip("/") + "/"
    return [f"/dev/{name}" for name, backing in _backing_files() if backing.startswith(root)]


def loops_backed_by(image: str) -> list[str]:
    """The sysfs names (loopN) of the loop devices whose backing file is `image`."""
    return [name for name, backing in _backing_files() if backing == image]


def leaks_under(root: str) -> list[str]:
    return [f"mount {m}" for m in mounts_under(root)] + [f"loop {d}" for d in loops_under(root)]


def clean_under(root: str) -> None:
    """Unmount (deepest first) and detach everything below `root`. Best effort."""
    import fcntl

    # Loop devices are found before anything is unmounted: a backing file on a
    # filesystem mounted inside `root` no longer shows a path under `root` once that
    # filesystem is (lazily) unmounted, and would escape the cleanup.
    loops = loops_under(root)
    for point in reversed(mounts_under(root)):
        _libc.umount2(point.encode(), MNT_DETACH)
    for dev in loops:
        try:
            fd = os.open(dev, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, 0x4C01)  # LOOP_CLR_FD
            finally:
                os.close(fd)
        except OSError:
            pass

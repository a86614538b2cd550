"""The only code in csi-py that touches the kernel: loop devices, mounts,
filesystems, image files and external tools.

The core receives a :class:`Host` and never imports the submodules' syscalls
directly, so unit tests can hand it ``tests.fakes.fake_host()`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from csi_py.linux.fs import Filesystems
from csi_py.linux.interfaces import FilesystemService, LoopService, MountService
from csi_py.linux.loop import LoopManager
from csi_py.linux.mount import Mounter


@dataclass(frozen=True)
class Host:
    """The kernel-facing services the core uses. Typed by protocol so the fakes of
    tests/fakes.py fit too; real_host() fills it with LoopManager, Mounter and
    Filesystems."""

    loops: LoopService
    mounts: MountService
    fs: FilesystemService


def real_host() -> Host:
    """A Host backed by the real kernel. Cheap; the services hold no state."""
    return Host(loops=LoopManager(), mounts=Mounter(), fs=Filesystems())


__all__ = [
    "FilesystemService",
    "Host",
    "LoopService",
    "MountService",
    "real_host",
]

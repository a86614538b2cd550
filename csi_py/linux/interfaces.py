"""Structural types of the Linux services, so the core can be given the real ones
(:func:`csi_py.linux.real_host`) or the in-memory fakes of tests/fakes.py alike.

Each method states its contract here: whether it is idempotent and what it raises. The
real implementations in loop.py, mount.py and fs.py say how they keep it, and
tests/integration/test_linux_contract.py runs the same checks against both. Image files
(create, grow, reflink, sparse copy, clone) are plain functions of
:mod:`csi_py.linux.files`: files are real in unit tests too, so they need no fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from csi_py.linux.fs import FsStats
from csi_py.linux.loop import LoopDevice
from csi_py.linux.mount import MountEntry, MountTable


@runtime_checkable
class LoopService(Protocol):
    """Loop devices bound to image files. Lookups never raise for a device that
    detaches while being read."""

    def attach(self, backing_file: str, *, direct_io: bool = True, read_only: bool = False,
               block_size: int | None = None) -> LoopDevice:
        """A new loop device on ``backing_file``. NOT idempotent (each call takes a new
        device). Raises LoopError (a bad backing file: ENOENT, EACCES, EISDIR) and
        ValueError (a block size that is not a power of two from 512 to 4096)."""
        ...

    def detach(self, device_path: str) -> None:
        """Unbind the device. Idempotent (a free or missing device is success).
        Raises DeviceBusy (mounted, held, or still open) leaving it as it was, and
        LoopError (not a loop device, another ioctl failure)."""
        ...

    def list_attached(self) -> list[LoopDevice]:
        """Every device bound to a file. Read-only."""
        ...

    def find_by_backing_file(self, backing_file: str) -> list[LoopDevice]:
        """The devices bound to that file, by path or by device and inode. Read-only."""
        ...

    def attached_to(self, backing_file: str) -> list[LoopDevice]:
        """As :meth:`find_by_backing_file`, scanning the devices only when something
        holds the file open. Read-only."""
        ...

    def held_open(self, backing_file: str) -> bool | None:
        """Whether anything holds the file open; None when that cannot be told.
        Read-only; never raises."""
        ...

    def get(self, device_path: str) -> LoopDevice | None:
        """The device if it is a loop device bound to a file, else None. Never raises."""
        ...

    def refresh_capacity(self, device_path: str) -> None:
        """Pick up the backing file's new size. Idempotent. Raises LoopError."""
        ...

    def set_direct_io(self, device_path: str, enabled: bool) -> None:
        """Direct I/O on or off. Idempotent. Raises LoopError (EINVAL: the backing
        file cannot do direct I/O; not attached)."""
        ...

    def set_read_ahead(self, device_path: str, kib: int) -> None:
        """The device's read-ahead in KiB. Idempotent. Raises ValueError (outside 0 to
        65536) and LoopError (not attached, sysfs refused)."""
        ...

    def get_read_ahead(self, device_path: str) -> int:
        """The device's read-ahead in KiB. Read-only. Raises LoopError (not attached)."""
        ...

    def flush(self, device_path: str) -> None:
        """Make the device's writes reach its backing file (not a mounted
        filesystem's own dirty data: freeze that). Idempotent. Raises LoopError."""
        ...


@runtime_checkable
class MountService(Protocol):
    """Mounts of this process's mount namespace. Paths are never resolved through
    symlinks."""

    def table(self) -> MountTable:
        """The mount table as it is now, read once. Raises OSError."""
        ...

    def list_mounts(self) -> list[MountEntry]:
        """Every mount, in mountinfo order. Read-only. Raises OSError."""
        ...

    def mounts_at(self, path: str) -> list[MountEntry]:
        """The mounts exactly at ``path``, bottom first (the last is visible).
        Read-only. Raises OSError."""
        ...

    def is_mounted(self, path: str) -> bool:
        """Whether something is mounted exactly at ``path``. Read-only. Raises OSError."""
        ...

    def mount(self, source: str, target: str, fs_type: str, options: Sequence[str] = (), *,
              read_only: bool = False) -> None:
        """Mount the filesystem on the device ``source`` at ``target``. NOT idempotent
        (check :meth:`mounts_at` first). Raises ValueError (bad option words) and
        MountError (the kernel refused; EBUSY for the same device there again, or a
        device mounted elsewhere with the other read-only setting)."""
        ...

    def bind_mount(self, source: str, target: str, *, read_only: bool = False,
                   extra_flags: Sequence[str] = ()) -> None:
        """Bind ``source`` (a directory, or a file or device node onto a file) to
        ``target``, non-recursively, with the flags asked for. NOT idempotent (binds
        stack). Raises ValueError (a word that is not a flag) and MountError, leaving
        no half-made bind behind."""
        ...

    def unmount(self, target: str) -> None:
        """Unmount the top mount at ``target``. Idempotent (nothing mounted there, or
        no such path, is success). Raises DeviceBusy (open files, a working directory,
        mounts beneath it) and MountError."""
        ...


@runtime_checkable
class FilesystemService(Protocol):
    """Filesystems on devices: the types of :data:`csi_py.linux.filesystems.FILESYSTEMS`.
    Where a call takes ``fs_type``, an unsupported one raises ValueError."""

    def detect(self, device: str) -> str | None:
        """What the device holds (a filesystem or other signature, "ambivalent" when two
        are there), or None when it is blank. Read-only. Raises LinuxError (it could not
        be read: never reported as blank), ToolMissing and CommandError."""
        ...

    def format(self, device: str, fs_type: str, *, label: str | None = None) -> None:
        """Make a filesystem, erasing what is there (call :meth:`detect` first). NOT
        idempotent. Raises ValueError (a bad label), ToolMissing and CommandError."""
        ...

    def statfs(self, path: str) -> FsStats:
        """Usage of the filesystem holding ``path``. Read-only. Raises OSError."""
        ...

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        """Grow the filesystem to fill the device (xfs and btrfs only mounted).
        Idempotent. Raises GrowNotPermitted (a mounted ext4 without CAP_SYS_RESOURCE),
        ValueError (no mount point where one is needed), ToolMissing, CommandError."""
        ...

    def block_device_size(self, device: str) -> int:
        """The device's size in bytes. Read-only. Raises LinuxError."""
        ...

    def can_grow_online(self, fs_type: str) -> bool:
        """Whether :meth:`grow` can grow a mounted one from this process. Never raises."""
        ...

    def needs_grow(self, device: str, mount_point: str | None, fs_type: str) -> bool:
        """Whether :meth:`grow` would make it bigger (False again right after a grow).
        Read-only. Raises ValueError (no mount point where one is needed) and
        LinuxError (unreadable, or no such filesystem there)."""
        ...

    def freeze(self, mount_point: str) -> None:
        """Flush and block every writer until :meth:`thaw`; ``mount_point`` must be
        the root of a mount. Idempotent (already frozen is success). Raises
        FreezeError (not a mount root, cannot freeze, the root filesystem, no
        permission, no such directory, a symlink)."""
        ...

    def thaw(self, mount_point: str) -> None:
        """Unblock the writers. Idempotent (not frozen is success). Raises FreezeError
        as :meth:`freeze` does."""
        ...

    def frozen(self, mount_points: Sequence[str]) -> AbstractContextManager[None]:
        """Freeze each in order for the body, then thaw every one frozen, in reverse,
        also when a later freeze or the body fails. Raises FreezeError (the first
        freeze or, after a body that succeeded, thaw failure)."""
        ...

    def errors(self, device: str, mount_point: str | None, fs_type: str) -> str | None:
        """The errors the kernel recorded for the filesystem, in words, or None when it
        looks healthy. Read-only. Raises ValueError (no mount point where one is
        needed), LinuxError, ToolMissing and CommandError."""
        ...

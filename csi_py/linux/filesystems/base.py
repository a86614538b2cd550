"""The protocol every filesystem class implements, and the device and ioctl helpers
they share.

Each supported filesystem (ext4, xfs, btrfs) is one class in its own module holding
every fact about it: its tools, the smallest volume csi-py makes with it, its mkfs
arguments, its signature, how it grows and whether it needs to, where its error
counters are and its mount and resize quirks. :mod:`csi_py.linux.filesystems` puts
one instance of each in the table that the service, config, Probe and validation read.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import struct
from typing import ClassVar, Protocol

from csi_py.linux._loop_abi import BLKGETSIZE64
from csi_py.linux.errors import LinuxError, errno_text

MKFS_TIMEOUT = 600.0
GROW_TIMEOUT = 600.0

CAP_SYS_RESOURCE = 24


class Filesystem(Protocol):
    """What csi-py knows about one filesystem type. Instances hold no state, so one of
    each serves every caller (thread-safe)."""

    # The fs_type a volume names ("ext4").
    name: ClassVar[str]
    # Every fs_type this class grows and checks: ext4's also handles ext2 and ext3.
    handles: ClassVar[tuple[str, ...]]
    # The smallest volume csi-py makes with this filesystem.
    min_bytes: ClassVar[int]
    # Longest label its mkfs accepts, in bytes.
    label_max: ClassVar[int]
    # mkfs argv without label and device.
    mkfs: ClassVar[tuple[str, ...]]
    # Every external tool mkfs, grow and errors may run (Probe reports each missing one).
    tools: ClassVar[tuple[str, ...]]
    # True: grows best unmounted, so it is grown before mounting at stage time (ext4
    # needs no CAP_SYS_RESOURCE then); False: grows only mounted (after mounting).
    grows_unmounted: ClassVar[bool]
    # Options every mount of it gets (xfs: nouuid, as clones share their source's UUID).
    mount_options: ClassVar[tuple[str, ...]]
    # The smallest size the kernel lets it grow to (btrfs: 256 MiB); 0 for no limit.
    min_grow_bytes: ClassVar[int]

    def probe(self, head: bytes) -> str | None:
        """The fs_type whose signature the first bytes of a device hold ("ext3" for
        the ext4 class), or None. Pure."""
        ...

    def can_grow_online(self) -> bool:
        """Whether this process can grow it while mounted. Never raises."""
        ...

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        """Grow it to fill ``device``; see Filesystems.grow. Idempotent."""
        ...

    def needs_grow(self, device: str, mount_point: str | None) -> bool:
        """Whether grow() would make it bigger on ``device``; see
        Filesystems.needs_grow. Read-only, idempotent."""
        ...

    def errors(self, device: str, mount_point: str | None) -> list[str]:
        """The errors the kernel recorded for it, one sentence each; see
        Filesystems.errors. Read-only, idempotent."""
        ...


class GrowsMounted(Filesystem):
    """The shared half of a filesystem that grows, measures and reports its errors only
    while mounted (xfs, btrfs): each of those calls needs a mount point. A subclass
    supplies the three steps on a mount point. Stateless (thread-safe)."""

    grows_unmounted = False

    def can_grow_online(self) -> bool:
        return True

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        self.grow_mounted(require_mount_point(device, mount_point, fs_type, "grow"))

    def needs_grow(self, device: str, mount_point: str | None) -> bool:
        mount_point = require_mount_point(device, mount_point, self.name, "grow")
        return self.needs_grow_mounted(device, mount_point, block_device_size(device))

    def errors(self, device: str, mount_point: str | None) -> list[str]:
        return self.errors_mounted(require_mount_point(device, mount_point, self.name, "check"))

    def grow_mounted(self, mount_point: str) -> None:
        """Grow the filesystem mounted at ``mount_point`` to fill its device.
        Idempotent. Raises CommandError."""
        raise NotImplementedError

    def needs_grow_mounted(self, device: str, mount_point: str, device_bytes: int) -> bool:
        """Whether growing would make it bigger on ``device`` (``device_bytes`` long).
        Read-only. Raises LinuxError."""
        raise NotImplementedError

    def errors_mounted(self, mount_point: str) -> list[str]:
        """The errors the kernel recorded for it. Read-only. Raises LinuxError."""
        raise NotImplementedError


def has_capability(field: str, bit: int) -> bool:
    """Whether capability ``bit`` is in set ``field`` ("CapEff", "CapBnd") of this
    process, from /proc/self/status. False when unreadable. Never raises."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def require_mount_point(device: str, mount_point: str | None, fs_type: str, op: str) -> str:
    """``mount_point``, or ValueError when there is none (xfs and btrfs answer only
    mounted)."""
    if not mount_point:
        raise ValueError(f"to {op} {fs_type} on {device} it must be mounted: no mount point")
    return mount_point


def read_device(device: str, size: int, offset: int = 0) -> bytes:
    """``size`` bytes of ``device`` from ``offset``. Raises LinuxError."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinuxError(f"cannot open {device}: {errno_text(exc.errno)}", device=device) from None
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise LinuxError(f"cannot read {device}: {errno_text(exc.errno)}", device=device) from None
    finally:
        os.close(fd)


def ioctl_dir(mount_point: str, request: int, size: int,
              index: tuple[str, int] | None = None) -> bytearray:
    """ioctl ``request`` on the directory ``mount_point`` through a ``size``-byte buffer,
    returned as the kernel filled it. ``index`` (a struct format and a number) is
    written at the buffer's start first, for a query by device or group number.
    Changes nothing itself (its callers pass only query ioctls). Raises OSError."""
    buf = bytearray(size)
    if index:
        struct.pack_into(index[0], buf, 0, index[1])
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, buf, True)
    finally:
        os.close(fd)
    return buf


def geometry_error(what: str, mount_point: str, err: int | None) -> LinuxError:
    return LinuxError(
        f"{what} on {mount_point} failed: {errno_text(err)} (not a mounted filesystem "
        "of that type?)",
        path=mount_point,
    )


def block_device_size(device: str) -> int:
    """Size of a block device in bytes (BLKGETSIZE64). Raises LinuxError."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinuxError(
            f"cannot open {device}: {errno_text(exc.errno)}", device=device
        ) from None
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, BLKGETSIZE64, buf, True)
        return int.from_bytes(buf, "little")
    except OSError as exc:
        err = exc.errno or _errno.EIO
        raise LinuxError(
            f"BLKGETSIZE64 on {device} failed: {errno_text(err)} (not a block device?)",
            device=device,
        ) from None
    finally:
        os.close(fd)

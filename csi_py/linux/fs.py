"""Filesystems on volume devices: detect, format (mkfs), grow, statfs, freeze,
health.

Detection reads the superblock magic in-process (fast, no fork on the stage path)
and falls back to ``blkid -p`` for everything else, so a device holding anything
(partition table, swap, LUKS, ...) is never mistaken for a blank one. Formatting
and growing run the filesystem's own tools through :mod:`csi_py.linux.exec`;
freezing, sizes and most health checks are ioctls and sysfs reads.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from csi_py.linux import _libc
from csi_py.linux._loop_abi import BLKGETSIZE64
from csi_py.linux.errors import (
    CommandError,
    FreezeError,
    GrowNotPermitted,
    LinuxError,
    errno_text,
)
from csi_py.linux.exec import find_tool, run
from csi_py.linux.mount import Mounter

SUPPORTED_FS = ("ext4", "xfs", "btrfs")

# Every tool format() and grow() may need; reported by missing_tools().
TOOLS = ("mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "resize2fs", "e2fsck", "xfs_growfs", "btrfs",
         "blkid")  # fmt: skip

# Smallest device each mkfs accepts here (xfsprogs >= 5.19 refuses under 300 MiB;
# mkfs.btrfs needs 109 MiB for its default single-device profiles), so the core can
# round requested capacities up instead of failing at stage time.
MIN_FS_BYTES = {"ext4": 1 << 20, "xfs": 300 << 20, "btrfs": 109 << 20}

# Longest label each mkfs accepts, in bytes.
_LABEL_MAX = {"ext4": 16, "xfs": 12, "btrfs": 255}

_MKFS: dict[str, tuple[str, ...]] = {
    # The device is a sparse file: discarding it at mkfs time only costs time.
    # Lazy init keeps mkfs of a big ext4 from writing every inode table now.
    "ext4": ("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
    "xfs": ("mkfs.xfs", "-q", "-f", "-K"),
    "btrfs": ("mkfs.btrfs", "-q", "-f", "-K"),
}

_MKFS_TIMEOUT = 600.0
_GROW_TIMEOUT = 600.0

# Superblock magics.
_EXT_SB = 1024  # ext2/3/4 superblock offset
_EXT_MAGIC_OFF = _EXT_SB + 0x38
_XFS_MAGIC = b"XFSB"
_BTRFS_MAGIC_OFF = 65536 + 64
_BTRFS_MAGIC = b"_BHRfS_M"
_PROBE_BYTES = _BTRFS_MAGIC_OFF + len(_BTRFS_MAGIC)

# ext feature bits that only ext4 sets (incompat: extents, 64bit, flex_bg, mmp,
# inline data, csum seed, ...; ro_compat: huge_file, gdt_csum, dir_nlink,
# extra_isize, metadata_csum, ...), as blkid distinguishes ext2/3/4.
_EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x0400 | 0x1000 | 0x2000 | 0x8000
_EXT4_RO_COMPAT = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0400
_EXT3_COMPAT_JOURNAL = 0x0004
_EXT_INCOMPAT_JOURNAL_DEV = 0x0008

EXT_TYPES = ("ext2", "ext3", "ext4")

# <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
# <xfs/xfs_fs.h>: _IOR('X', 126, struct xfs_fsop_geom) (256 bytes, Linux 5.2+),
# _IOR('X', 124, struct xfs_fsop_geom_v4) (112 bytes), and
# _IOWR('X', 61, struct xfs_ag_geometry) (128 bytes).
XFS_IOC_FSGEOMETRY = 0x8100587E
XFS_IOC_FSGEOMETRY_V4 = 0x8070587C
XFS_IOC_AG_GEOMETRY = 0xC080583D
XFS_MIN_AG_BLOCKS = 64
# <linux/btrfs.h>: _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args) (1024 bytes) and
# _IOWR(0x94, 30, struct btrfs_ioctl_dev_info_args) (4096 bytes).
BTRFS_IOC_FS_INFO = 0x8400941F
BTRFS_IOC_DEV_INFO = 0xD000941E

CAP_SYS_RESOURCE = 24

# xfs_fsop_geom.sick and xfs_ag_geometry.ag_sick bits (<xfs/xfs_fs.h>).
XFS_FS_SICK = {
    1 << 0: "summary counters", 1 << 1: "user quota", 1 << 2: "group quota",
    1 << 3: "project quota", 1 << 4: "realtime bitmap", 1 << 5: "realtime summary",
    1 << 6: "quota counts", 1 << 7: "inode link counts",
}  # fmt: skip
XFS_AG_SICK = {
    1 << 0: "superblock", 1 << 1: "AGF header", 1 << 2: "AGFL header", 1 << 3: "AGI header",
    1 << 4: "free space by block btree", 1 << 5: "free space by length btree",
    1 << 6: "inode btree", 1 << 7: "free inode btree", 1 << 8: "reverse mapping btree",
    1 << 9: "reference count btree", 1 << 10: "inodes",
}  # fmt: skip

# ext4's own error codes in s_first_error_errcode / sysfs first_error_errcode
# (EXT4_ERR_* in fs/ext4/ext4.h).
EXT4_ERRCODES = {
    1: "unknown", 2: "EIO", 3: "ENOMEM", 4: "EFSBADCRC", 5: "EFSCORRUPTED", 6: "ENOSPC",
    7: "ENOKEY", 8: "EROFS", 9: "EFBIG", 10: "EEXIST", 11: "ERANGE", 12: "EOVERFLOW",
    13: "EBUSY", 14: "ENOTDIR", 15: "ENOTEMPTY", 16: "ESHUTDOWN", 17: "EFAULT",
}  # fmt: skip


@dataclass(frozen=True)
class FsStats:
    """Capacity and inode counts of a mounted filesystem (what df shows)."""

    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def probe_superblock(head: bytes) -> str | None:
    """Filesystem type from the first bytes of a device (at least 65608 bytes are
    needed to see btrfs), or None if no known magic is there; "ambivalent" if more
    than one is. Pure function."""
    found = []
    if len(head) >= _EXT_MAGIC_OFF + 2 and head[_EXT_MAGIC_OFF : _EXT_MAGIC_OFF + 2] == b"\x53\xef":
        compat, incompat, ro_compat = struct.unpack_from("<III", head, _EXT_SB + 0x5C)
        if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
            found.append("jbd")
        elif incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT:
            found.append("ext4")
        elif compat & _EXT3_COMPAT_JOURNAL:
            found.append("ext3")
        else:
            found.append("ext2")
    if head[:4] == _XFS_MAGIC:
        found.append("xfs")
    if head[_BTRFS_MAGIC_OFF:_PROBE_BYTES] == _BTRFS_MAGIC:
        found.append("btrfs")
    if len(found) > 1:
        return "ambivalent"
    return found[0] if found else None


def validate_label(fs_type: str, label: str) -> None:
    """Raise ValueError unless ``label`` fits ``fs_type``'s mkfs: 1 to 16 (ext4),
    12 (xfs) or 255 (btrfs) bytes of UTF-8, no control characters."""
    raw = label.encode()
    limit = _LABEL_MAX.get(fs_type, 0)
    if not raw or len(raw) > limit or any(c < 0x20 or c == 0x7F for c in raw):
        raise ValueError(
            f"invalid {fs_type} label {label!r}: 1 to {limit} bytes, no control characters"
        )


class Filesystems:
    """mkfs, grow, detect and statfs for the supported filesystem types."""

    def detect(self, device: str) -> str | None:
        """What ``device`` holds: "ext4", "ext3", "ext2", "xfs", "btrfs", any other
        blkid TYPE or PTTYPE (e.g. "swap", "crypto_LUKS", "dos", "gpt"), or None if
        it is blank. Never reports "blank" for something it cannot read: I/O errors
        raise LinuxError; ``blkid`` problems raise ToolMissing/CommandError. When two
        signatures are present and blkid cannot decide, returns "ambivalent".
        Read-only, idempotent.
        """
        try:
            fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LinuxError(
                f"cannot open {device} to detect its filesystem: {errno_text(exc.errno)}",
                device=device,
            ) from None
        try:
            head = os.pread(fd, _PROBE_BYTES, 0)
        except OSError as exc:
            raise LinuxError(
                f"cannot read {device} to detect its filesystem: {errno_text(exc.errno)}",
                device=device,
            ) from None
        finally:
            os.close(fd)
        found = probe_superblock(head)
        if found is not None and found != "ambivalent":
            return found
        # -p: low-level probe, bypassing the blkid cache (which may be stale).
        proc = run(["blkid", "-p", "-o", "export", device], ok_returncodes=(0, 2, 8))
        if proc.returncode == 2:
            return found  # None: nothing at all
        if proc.returncode == 8:
            return "ambivalent"
        values = dict(
            line.split("=", 1)
            for line in proc.stdout.decode(errors="replace").splitlines()
            if "=" in line
        )
        return values.get("TYPE") or values.get("PTTYPE") or "unknown"

    def format(self, device: str, fs_type: str, *, label: str | None = None) -> None:
        """Make a ``fs_type`` filesystem on ``device``, overwriting whatever is there
        (the caller must check :meth:`detect` first). No discard, since the device
        is a sparse file. NOT idempotent in effect (a second format erases data).
        Raises ValueError for an unsupported type or an invalid label, ToolMissing,
        CommandError.
        """
        if fs_type not in _MKFS:
            raise ValueError(
                f"unsupported filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        argv = list(_MKFS[fs_type])
        if label is not None:
            validate_label(fs_type, label)
            argv += ["-L", label]
        argv.append(device)
        run(argv, timeout=_MKFS_TIMEOUT)

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        """Grow the filesystem to fill ``device`` (whose size must already be the new
        one: see LoopManager.refresh_capacity).

        ext4 grows with resize2fs on the device, mounted or not (unmounted, it is
        checked with ``e2fsck -f -p`` first when resize2fs asks for it); xfs and
        btrfs can only grow mounted, so they need ``mount_point``. Idempotent: a
        filesystem that already fills the device is left as it is (even without
        the capability below). Raises GrowNotPermitted when a mounted ext4 needs
        growing and this process lacks CAP_SYS_RESOURCE (see
        :meth:`can_grow_online`), ValueError (unsupported type, missing mount
        point), ToolMissing, CommandError.
        """
        if fs_type in EXT_TYPES:
            try:
                run(["resize2fs", device], timeout=_GROW_TIMEOUT)
            except CommandError as exc:
                if "Permission denied to resize" in exc.stderr:
                    # EXT4_IOC_RESIZE_FS (online resize) requires CAP_SYS_RESOURCE.
                    raise GrowNotPermitted(
                        _grow_not_permitted_message(device, mount_point, fs_type),
                        device=device,
                        mount_point=mount_point,
                        fs_type=fs_type,
                    ) from None
                if "e2fsck -f" not in exc.stderr or mount_point is not None:
                    raise
                # Offline resize wants a freshly checked filesystem. Exit 1 means
                # "errors corrected"; e2fsck itself refuses to touch a mounted fs.
                run(["e2fsck", "-f", "-p", device], timeout=_GROW_TIMEOUT, ok_returncodes=(0, 1))
                run(["resize2fs", device], timeout=_GROW_TIMEOUT)
            return
        if fs_type not in ("xfs", "btrfs"):
            raise ValueError(
                f"cannot grow filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        if not mount_point:
            raise ValueError(f"growing {fs_type} on {device} needs it mounted: no mount point")
        if fs_type == "xfs":
            run(["xfs_growfs", "-d", mount_point], timeout=_GROW_TIMEOUT)
        else:
            run(["btrfs", "filesystem", "resize", "max", mount_point], timeout=_GROW_TIMEOUT)

    def can_grow_online(self, fs_type: str) -> bool:
        """Whether :meth:`grow` can grow a mounted ``fs_type`` filesystem from this
        process: xfs and btrfs always; ext2/3/4 only with CAP_SYS_RESOURCE in the
        effective capability set (checked now, from /proc/self/status). False for
        other types. Never raises."""
        if fs_type in EXT_TYPES:
            return _has_capability("CapEff", CAP_SYS_RESOURCE)
        return fs_type in ("xfs", "btrfs")

    def needs_grow(self, device: str, mount_point: str | None, fs_type: str) -> bool:
        """Whether :meth:`grow` would make the filesystem on ``device`` bigger, e.g.
        after restoring a snapshot into a bigger volume. Compares the filesystem's
        own size (ext2/3/4: superblock block count, read from the device; xfs:
        XFS_IOC_FSGEOMETRY; btrfs: BTRFS_IOC_DEV_INFO) with the device, allowing
        for the tail each grow tool leaves unused (ext: less than a page, or a
        new group too small for its metadata; xfs: a new allocation group under
        64 blocks; btrfs: a partial sector), so it is False again right after a
        grow. No fork.

        Read-only, idempotent. ext needs no mount point; xfs and btrfs must be
        mounted (ValueError otherwise, as for grow). Raises ValueError for an
        unsupported type, LinuxError when the device or mount point cannot be read
        or holds no such filesystem.
        """
        if fs_type in EXT_TYPES:
            return _ext_needs_grow(device, self.block_device_size(device))
        if fs_type not in ("xfs", "btrfs"):
            raise ValueError(
                f"cannot grow filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        mount_point = _require_mount_point(device, mount_point, fs_type, "grow")
        device_bytes = self.block_device_size(device)
        if fs_type == "xfs":
            return _xfs_needs_grow(mount_point, device_bytes)
        return _btrfs_needs_grow(device, mount_point, device_bytes)

    def filesystem_size(self, mount_point: str) -> int:
        """Size in bytes of the filesystem mounted at (or holding) ``mount_point``
        as statfs reports it (f_blocks * f_frsize: what df shows, without the
        metadata the filesystem keeps for itself). Raises OSError."""
        st = os.statvfs(mount_point)
        return st.f_blocks * st.f_frsize

    def freeze(self, mount_point: str) -> None:
        """Freeze the filesystem mounted at ``mount_point`` (FIFREEZE): dirty data
        and the journal are flushed, and every writer blocks until :meth:`thaw`,
        so the device below holds a consistent filesystem to snapshot.

        ``mount_point`` must be the root of a mount (checked on the opened
        directory with statx STATX_ATTR_MOUNT_ROOT, or mountinfo on old kernels):
        freezing any other directory would freeze the whole filesystem holding it.
        The root filesystem is refused. Idempotent: an already frozen filesystem
        (EBUSY) is success, so a retry after a crash mid-snapshot works; it
        cannot tell who froze it. Unmounting a frozen filesystem succeeds but
        leaves its superblock frozen and its device busy: thaw first. Raises
        FreezeError (errno EINVAL: not a mount point; EOPNOTSUPP: a filesystem
        that cannot freeze, e.g. tmpfs; EPERM: no CAP_SYS_ADMIN or the root
        filesystem; ENOENT; ENOTDIR, also for a symlink, which is not followed).
        """
        fd = _open_mount_root(mount_point, "freeze")
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == _errno.EBUSY:
                return  # already frozen
            raise _freeze_error("freeze (FIFREEZE)", mount_point, exc.errno) from None
        finally:
            os.close(fd)

    def thaw(self, mount_point: str) -> None:
        """Thaw the filesystem mounted at ``mount_point`` (FITHAW), unblocking its
        writers. Idempotent: a filesystem that is not frozen (EINVAL) is success.
        Raises FreezeError as :meth:`freeze` does (not a mount point, ...)."""
        fd = _open_mount_root(mount_point, "thaw")
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as exc:
            if exc.errno == _errno.EINVAL:
                return  # not frozen
            raise _freeze_error("thaw (FITHAW)", mount_point, exc.errno) from None
        finally:
            os.close(fd)

    def frozen(self, mount_points: Sequence[str]) -> AbstractContextManager[None]:
        """A context manager that freezes ``mount_points`` in order and, on the way
        out, thaws every one it froze in reverse order: also when freezing a later
        one fails (that FreezeError is raised after the thaws) or the body raises.
        A thaw failure does not stop the other thaws; it is raised when the body
        succeeded, else added as a note to the body's exception. See :meth:`freeze`
        for what counts as frozen (one already frozen is taken over and thawed)."""
        return hold_frozen(self, mount_points)

    def errors(self, device: str, mount_point: str | None, fs_type: str) -> str | None:
        """A human-readable description of the errors the kernel has recorded for
        the filesystem on ``device`` (mounted at ``mount_point``), or None if it
        looks healthy. Read-only and cheap enough for every NodeGetVolumeStats:

        - ext2/3/4: the error counter, first and last error (time, function, line,
          code) from /sys/fs/ext4/<dev>/ while mounted, else from the superblock
          on the device (also its "has errors" state flag). Needs no mount point.
        - xfs (needs ``mount_point``): a shut-down filesystem (xfs shuts down on
          metadata corruption or I/O errors it cannot handle; stat of the mount
          point then fails with EIO), else the "sick" flags of the filesystem and
          of each allocation group (XFS_IOC_FSGEOMETRY, XFS_IOC_AG_GEOMETRY).
          /sys/fs/xfs/<dev>/ has only error-handling knobs, log and statistics:
          nothing there reveals a shutdown or corruption.
        - btrfs (needs ``mount_point``): non-zero ``btrfs device stats`` counters
          (write/read/flush I/O errors, corruption, generation errors).

        With a mount point, what mountinfo's superblock options say is reported
        too: a filesystem mounted read-write that is now read-only ("ro", or
        ext4's "emergency_ro" after errors=remount-ro), or a shut-down ext4
        ("shutdown", which does not count as an error in its counter).

        Idempotent. Raises ValueError for an unsupported type or a missing mount
        point, LinuxError when the device or mount point cannot be read,
        ToolMissing/CommandError from ``btrfs``.
        """
        if fs_type in EXT_TYPES:
            found = _ext_errors(device)
        elif fs_type in ("xfs", "btrfs"):
            mp = _require_mount_point(device, mount_point, fs_type, "check")
            found = _xfs_errors(mp) if fs_type == "xfs" else _btrfs_errors(mp)
        else:
            raise ValueError(
                f"cannot check filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        if mount_point:
            found += _mount_state(mount_point)
        if not found:
            return None
        where = f" mounted at {mount_point}" if mount_point else ""
        return f"{fs_type} on {device}{where}: " + "; ".join(found)

    def statfs(self, path: str) -> FsStats:
        """Usage of the filesystem mounted at (or containing) ``path``; available is
        what an unprivileged user may still write. Raises OSError."""
        st = os.statvfs(path)
        total = st.f_blocks * st.f_frsize
        free = st.f_bfree * st.f_frsize
        return FsStats(
            total_bytes=total,
            available_bytes=st.f_bavail * st.f_frsize,
            used_bytes=total - free,
            total_inodes=st.f_files,
            free_inodes=st.f_ffree,
            used_inodes=max(st.f_files - st.f_ffree, 0),
        )

    def missing_tools(self) -> list[str]:
        """The external tools of :data:`TOOLS` that are not installed. Idempotent."""
        return [tool for tool in TOOLS if find_tool(tool) is None]

    def block_device_size(self, device: str) -> int:
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


# ---- freezing ----------------------------------------------------------------------


class _Freezer(Protocol):
    def freeze(self, mount_point: str) -> None: ...
    def thaw(self, mount_point: str) -> None: ...


@contextmanager
def hold_frozen(service: _Freezer, mount_points: Sequence[str]) -> Iterator[None]:
    """The body of :meth:`Filesystems.frozen`, for any object with freeze/thaw (the
    fakes share it, so both behave the same on partial failures)."""
    done: list[str] = []
    try:
        for mount_point in mount_points:
            service.freeze(mount_point)
            done.append(mount_point)
        yield
    except BaseException as exc:
        for failure in _thaw_all(service, done):
            exc.add_note(f"thawing after the failure also failed: {failure}")
        raise
    failures = _thaw_all(service, done)
    if failures:
        raise failures[0]


def _thaw_all(service: _Freezer, mount_points: list[str]) -> list[Exception]:
    failures = []
    for mount_point in reversed(mount_points):
        try:
            service.thaw(mount_point)
        except Exception as exc:  # keep thawing the others: a frozen fs hangs its users
            failures.append(exc)
    return failures


def _open_mount_root(mount_point: str, op: str) -> int:
    try:
        # O_NOFOLLOW: a symlink planted at the mount point is not followed.
        fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise FreezeError(
            f"cannot {op} {mount_point}: {errno_text(exc.errno)}",
            path=mount_point,
            errno=exc.errno,
        ) from None
    try:
        root = _libc.is_mount_root(fd)
        if root is None:
            root = Mounter().is_mounted(os.path.realpath(mount_point))
        if not root:
            raise FreezeError(
                f"cannot {op} {mount_point}: it is not a mount point (freezing a "
                "directory would freeze the whole filesystem holding it)",
                path=mount_point,
                errno=_errno.EINVAL,
            )
        if os.fstat(fd).st_dev == os.stat("/").st_dev:
            raise FreezeError(
                f"refusing to {op} {mount_point}: it is the root filesystem",
                path=mount_point,
                errno=_errno.EPERM,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _freeze_error(what: str, mount_point: str, err: int | None) -> FreezeError:
    hints = {
        _errno.EOPNOTSUPP: "; this filesystem type cannot be frozen",
        _errno.EPERM: "; freezing needs CAP_SYS_ADMIN",
    }
    return FreezeError(
        f"{what} of {mount_point} failed: {errno_text(err)}{hints.get(err or 0, '')}",
        path=mount_point,
        errno=err,
    )


# ---- capabilities and growing --------------------------------------------------------


def _has_capability(field: str, bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def _grow_not_permitted_message(device: str, mount_point: str | None, fs_type: str) -> str:
    where = f" mounted at {mount_point}" if mount_point else " (mounted)"
    if _has_capability("CapBnd", CAP_SYS_RESOURCE):
        how = "give the node plugin that capability (e.g. run it privileged)"
    else:
        how = (
            "it is not even in this process's capability bounding set, so run the "
            "node plugin privileged (or in a container that grants it)"
        )
    return (
        f"cannot grow the {fs_type} filesystem on {device}{where}: online ext4 resize "
        f"needs CAP_SYS_RESOURCE, which this process lacks; {how}, or grow it while "
        "it is unmounted"
    )


def _require_mount_point(device: str, mount_point: str | None, fs_type: str, op: str) -> str:
    if not mount_point:
        raise ValueError(f"to {op} {fs_type} on {device} it must be mounted: no mount point")
    return mount_point


def _read_device(device: str, size: int, offset: int = 0) -> bytes:
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


@dataclass(frozen=True)
class _ExtSuper:
    """The ext2/3/4 superblock fields needs_grow() and errors() use."""

    raw: bytes

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("<H", self.raw, off)[0])

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.raw, off)[0])

    @property
    def block_size(self) -> int:
        return 1024 << self.u32(0x18)

    @property
    def blocks_count(self) -> int:
        hi = self.u32(0x150) if self.u32(0x60) & 0x80 else 0  # INCOMPAT_64BIT
        return hi << 32 | self.u32(0x04)


def _ext_super(device: str) -> _ExtSuper:
    raw = _read_device(device, 1024, _EXT_SB)
    if len(raw) < 1024 or raw[0x38:0x3A] != b"\x53\xef":
        raise LinuxError(f"{device} holds no ext2/3/4 filesystem", device=device)
    return _ExtSuper(raw)


def _ext_has_super_backup(sb: _ExtSuper, group: int) -> bool:
    if group == 0:
        return True
    if sb.u32(0x5C) & 0x200:  # COMPAT_SPARSE_SUPER2: backups in two groups only
        return group in (sb.u32(0x24C), sb.u32(0x250))
    if not sb.u32(0x64) & 0x1:  # no RO_COMPAT_SPARSE_SUPER: a backup in every group
        return True
    if group == 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False


def _ext_needs_grow(device: str, device_bytes: int) -> bool:
    sb = _ext_super(device)
    bs = sb.block_size
    current = sb.blocks_count
    first, per_group = sb.u32(0x14), sb.u32(0x20)
    inode_blocks = -(-sb.u32(0x28) * sb.u16(0x58) // bs)
    desc_size = max(sb.u16(0xFE), 32) if sb.u32(0x60) & 0x80 else 32
    reserved_gdt = sb.u16(0xCE)
    blocks = device_bytes // bs
    # resize2fs sizes a filesystem with blocks smaller than a page in whole pages.
    page = os.sysconf("SC_PAGE_SIZE")
    if page > bs:
        blocks -= blocks % (page // bs)
    # resize2fs drops a last group too small for its metadata plus 50 blocks
    # (adjust_fs_info()); the kernel's online resize drops a little less, so
    # this is the conservative answer for both.
    while blocks > current:
        groups = -(-(blocks - first) // per_group)
        rem = (blocks - first) % per_group
        overhead = 2 + inode_blocks
        if _ext_has_super_backup(sb, groups - 1):
            overhead += 1 + -(-groups // (bs // desc_size)) + reserved_gdt
        if groups > 1 and rem and rem < overhead + 50:
            blocks -= rem
            continue
        return True
    return False


def _ioctl_dir(mount_point: str, request: int, buf: bytearray) -> None:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, buf, True)
    finally:
        os.close(fd)


def _xfs_geometry(mount_point: str) -> tuple[bytearray, bool]:
    """XFS_IOC_FSGEOMETRY output, and whether it is the v5 layout (with ``sick``).
    Raises OSError."""
    buf = bytearray(256)
    try:
        _ioctl_dir(mount_point, XFS_IOC_FSGEOMETRY, buf)
        return buf, True
    except OSError as exc:
        if exc.errno not in (_errno.ENOTTY, _errno.EINVAL):
            raise
    buf = bytearray(112)  # kernels before 5.2
    _ioctl_dir(mount_point, XFS_IOC_FSGEOMETRY_V4, buf)
    return buf, False


def _geometry_error(what: str, mount_point: str, err: int | None) -> LinuxError:
    return LinuxError(
        f"{what} on {mount_point} failed: {errno_text(err)} (not a mounted filesystem "
        "of that type?)",
        path=mount_point,
    )


def _xfs_needs_grow(mount_point: str, device_bytes: int) -> bool:
    try:
        geom, _ = _xfs_geometry(mount_point)
    except OSError as exc:
        raise _geometry_error("XFS_IOC_FSGEOMETRY", mount_point, exc.errno) from None
    block_size, _rtext, ag_blocks = struct.unpack_from("<III", geom, 0)
    (data_blocks,) = struct.unpack_from("<Q", geom, 32)
    blocks = device_bytes // block_size
    # xfs_growfs_data_private(): a new last AG under XFS_MIN_AG_BLOCKS is left off.
    tail = blocks % ag_blocks
    if tail and tail < XFS_MIN_AG_BLOCKS:
        blocks -= tail
    return bool(blocks > data_blocks)


# The kernel refuses BTRFS_IOC_RESIZE to a size under 256 MiB (fs/btrfs/ioctl.c), so a
# btrfs filesystem can only be grown to at least that.
BTRFS_MIN_RESIZE_BYTES = 256 << 20


def _btrfs_needs_grow(device: str, mount_point: str, device_bytes: int) -> bool:
    if device_bytes < BTRFS_MIN_RESIZE_BYTES:
        # The kernel refuses to resize btrfs below 256 MiB: a device that small is as
        # grown as it can be.
        return False
    info = bytearray(1024)
    try:
        _ioctl_dir(mount_point, BTRFS_IOC_FS_INFO, info)
    except OSError as exc:
        raise _geometry_error("BTRFS_IOC_FS_INFO", mount_point, exc.errno) from None
    max_id, num_devices = struct.unpack_from("<QQ", info, 0)
    (sector_size,) = struct.unpack_from("<I", info, 36)
    try:
        want = os.stat(device).st_rdev
    except OSError as exc:
        raise LinuxError(f"cannot stat {device}: {errno_text(exc.errno)}", device=device) from None
    sizes = []
    for devid in range(1, max_id + 1):
        dev = bytearray(4096)
        struct.pack_into("<Q", dev, 0, devid)
        try:
            _ioctl_dir(mount_point, BTRFS_IOC_DEV_INFO, dev)
        except OSError as exc:
            if exc.errno == _errno.ENODEV:
                continue  # a removed device's id
            raise _geometry_error("BTRFS_IOC_DEV_INFO", mount_point, exc.errno) from None
        (total,) = struct.unpack_from("<Q", dev, 32)
        path = os.fsdecode(bytes(dev[3072:]).split(b"\0", 1)[0])
        sizes.append(total)
        try:
            if os.stat(path).st_rdev == want:
                sizes = [total]
                break
        except OSError:
            pass
    else:
        if num_devices != 1 or len(sizes) != 1:
            raise LinuxError(
                f"{device} is not a device of the btrfs filesystem at {mount_point}",
                device=device,
                path=mount_point,
            )
    # "btrfs filesystem resize max" rounds the device size down to the sector size.
    return device_bytes // sector_size * sector_size > sizes[0]


# ---- health ----------------------------------------------------------------------------


def _sysfs_name(device: str) -> str | None:
    """The kernel's name of a block device ("loop3"), as /sys/fs/<type>/ uses it."""
    try:
        rdev = os.stat(device).st_rdev
        return os.path.basename(os.readlink(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))
    except OSError:
        return None


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _error_event(label: str, when: int, func: str, line: int, code: int) -> str:
    parts = [f"{label} at {_when(when)}" if when else label]
    if func:
        parts.append(f"in {func}" + (f" line {line}" if line else ""))
    if code:
        parts.append(f"({EXT4_ERRCODES.get(code, f'code {code}')})")
    return " ".join(parts)


def _ext_errors(device: str) -> list[str]:
    name = _sysfs_name(device)
    sysfs = f"/sys/fs/ext4/{name}" if name else None
    if sysfs and os.path.exists(f"{sysfs}/errors_count"):
        # Mounted: the kernel's live counters (ext2/3 are served by ext4 too).
        def attr(key: str) -> str:
            try:
                with open(f"{sysfs}/{key}") as f:
                    return f.read().strip()
            except OSError:
                return ""

        def num(key: str) -> int:
            value = attr(key)
            return int(value) if value.isdigit() else 0

        count = num("errors_count")
        if not count:
            return []
        first = _error_event(
            "first", num("first_error_time"), attr("first_error_func"),
            num("first_error_line"), num("first_error_errcode"),
        )  # fmt: skip
        last = _error_event(
            "last", num("last_error_time"), attr("last_error_func"),
            num("last_error_line"), num("last_error_errcode"),
        )  # fmt: skip
        return [f"{count} error(s) recorded ({first}; {last}); unmount it and run e2fsck -f"]
    sb = _ext_super(device)
    count = sb.u32(0x194)
    has_errors = bool(sb.u16(0x3A) & 0x0002)  # s_state & EXT2_ERROR_FS
    if not count and not has_errors:
        return []

    def func(off: int) -> str:
        return sb.raw[off : off + 32].split(b"\0", 1)[0].decode(errors="replace")

    if not count:
        return ["the superblock is marked as having errors; run e2fsck -f"]
    first = _error_event("first", sb.u32(0x198), func(0x1A8), sb.u32(0x1C8), sb.raw[0x27A])
    last = _error_event("last", sb.u32(0x1CC), func(0x1E0), sb.u32(0x1D4), sb.raw[0x27B])
    return [f"{count} error(s) recorded ({first}; {last}); run e2fsck -f"]


def _bits(value: int, names: dict[int, str]) -> list[str]:
    found = [name for bit, name in names.items() if value & bit]
    unknown = value & ~sum(names)
    if unknown:
        found.append(f"flags {unknown:#x}")
    return found


def _xfs_errors(mount_point: str) -> list[str]:
    shutdown = [
        "the filesystem has shut down after an error (I/O fails with EIO); "
        "unmount it and run xfs_repair"
    ]
    try:
        # A shut-down xfs fails every getattr with EIO: a read-only probe.
        os.stat(mount_point)
        geom, v5 = _xfs_geometry(mount_point)
    except OSError as exc:
        if exc.errno == _errno.EIO:
            return shutdown
        raise _geometry_error("XFS_IOC_FSGEOMETRY", mount_point, exc.errno) from None
    if not v5:
        return []  # kernels before 5.2 keep no health state
    found = []
    sick = struct.unpack_from("<I", geom, 112)[0]
    if sick:
        found.append("unhealthy metadata: " + ", ".join(_bits(sick, XFS_FS_SICK)))
    (ag_count,) = struct.unpack_from("<I", geom, 12)
    for ag in range(ag_count):
        buf = bytearray(128)
        struct.pack_into("<I", buf, 0, ag)
        try:
            _ioctl_dir(mount_point, XFS_IOC_AG_GEOMETRY, buf)
        except OSError as exc:
            if exc.errno == _errno.EIO:
                return shutdown
            break  # no per-AG health on this kernel
        ag_sick = struct.unpack_from("<I", buf, 20)[0]
        if ag_sick:
            what = ", ".join(_bits(ag_sick, XFS_AG_SICK))
            found.append(f"allocation group {ag} unhealthy: {what}")
    if found:
        found.append("unmount it and run xfs_repair")
    return found


_BTRFS_STAT = re.compile(r"^\[(?P<dev>.+)\]\.(?P<name>\w+)\s+(?P<value>\d+)$")


def _btrfs_errors(mount_point: str) -> list[str]:
    out = run(["btrfs", "device", "stats", mount_point], timeout=30).stdout.decode(errors="replace")
    bad: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = _BTRFS_STAT.match(line.strip())
        if m and int(m.group("value")):
            bad.setdefault(m.group("dev"), []).append(f"{m.group('name')} {m.group('value')}")
    return [
        f"device {dev} has recorded errors: {', '.join(counters)}; run btrfs scrub, and "
        "btrfs device stats -z to reset the counters"
        for dev, counters in bad.items()
    ]


def _mount_state(mount_point: str) -> list[str]:
    """What the superblock options of the mount at ``mount_point`` say went wrong:
    read-only although mounted read-write ("ro", or ext4's "emergency_ro" since
    Linux 6.x for errors=remount-ro), or ext4's "shutdown"."""
    try:
        entries = Mounter().mounts_at(mount_point)
    except OSError:
        return []
    if not entries:
        return []
    top = entries[-1]
    found = []
    if "shutdown" in top.super_options:
        found.append("the filesystem has been shut down (I/O fails with EIO)")
    if not top.read_only and ("ro" in top.super_options or "emergency_ro" in top.super_options):
        found.append(
            "mounted read-write but the filesystem is now read-only (forced after an error)"
        )
    return found

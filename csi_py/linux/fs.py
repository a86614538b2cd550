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
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from csi_py.linux import _libc
from csi_py.linux.errors import FreezeError, LinuxError, errno_text
from csi_py.linux.exec import run
from csi_py.linux.filesystems import (
    EXT_TYPES,
    FILESYSTEMS,
    MIN_FS_BYTES,
    PROBE_BYTES,
    SUPPORTED,
    Filesystem,
    for_type,
    tools,
)
from csi_py.linux.filesystems.base import MKFS_TIMEOUT, block_device_size
from csi_py.linux.mount import Mounter

__all__ = ["EXT_TYPES", "MIN_FS_BYTES", "SUPPORTED_FS", "TOOLS", "Filesystems", "FsStats",
           "hold_frozen", "probe_superblock", "validate_label"]

# Derived from the one table in csi_py.linux.filesystems (kept under their old names
# for the fakes and tests that import them from here).
SUPPORTED_FS = SUPPORTED
# Every tool format(), grow() and errors() may need (filesystems.missing_tools reports them).
TOOLS = tuple(tools())

# <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


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
    found = [t for t in (fs.probe(head) for fs in FILESYSTEMS.values()) if t is not None]
    if len(found) > 1:
        return "ambivalent"
    return found[0] if found else None


def validate_label(fs_type: str, label: str) -> None:
    """Raise ValueError unless ``label`` fits ``fs_type``'s mkfs: 1 to 16 (ext4),
    12 (xfs) or 255 (btrfs) bytes of UTF-8, no control characters."""
    raw = label.encode()
    fs = FILESYSTEMS.get(fs_type)
    limit = fs.label_max if fs else 0
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
            head = os.pread(fd, PROBE_BYTES, 0)
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
        fs = FILESYSTEMS.get(fs_type)
        if fs is None:
            raise ValueError(
                f"unsupported filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        argv = list(fs.mkfs)
        if label is not None:
            validate_label(fs_type, label)
            argv += ["-L", label]
        argv.append(device)
        run(argv, timeout=MKFS_TIMEOUT)

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
        _fs_for(fs_type, "grow").grow(device, mount_point, fs_type)

    def can_grow_online(self, fs_type: str) -> bool:
        """Whether :meth:`grow` can grow a mounted ``fs_type`` filesystem from this
        process: xfs and btrfs always; ext2/3/4 only with CAP_SYS_RESOURCE in the
        effective capability set (checked now, from /proc/self/status). False for
        other types. Never raises."""
        fs = for_type(fs_type)
        return fs is not None and fs.can_grow_online()

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
        return _fs_for(fs_type, "grow").needs_grow(device, mount_point)

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
        # EBUSY: already frozen.
        _freeze_ioctl(mount_point, "freeze", FIFREEZE, "FIFREEZE", done=_errno.EBUSY)

    def thaw(self, mount_point: str) -> None:
        """Thaw the filesystem mounted at ``mount_point`` (FITHAW), unblocking its
        writers. Idempotent: a filesystem that is not frozen (EINVAL) is success.
        Raises FreezeError as :meth:`freeze` does (not a mount point, ...)."""
        # EINVAL: not frozen.
        _freeze_ioctl(mount_point, "thaw", FITHAW, "FITHAW", done=_errno.EINVAL)

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
        found = _fs_for(fs_type, "check").errors(device, mount_point)
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

    def block_device_size(self, device: str) -> int:
        """Size of a block device in bytes (BLKGETSIZE64). Raises LinuxError."""
        return block_device_size(device)


def _fs_for(fs_type: str, op: str) -> Filesystem:
    fs = for_type(fs_type)
    if fs is None:
        raise ValueError(
            f"cannot {op} filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
        )
    return fs


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


def _freeze_ioctl(mount_point: str, op: str, request: int, name: str, *, done: int) -> None:
    """FIFREEZE or FITHAW on the root of ``mount_point``; the errno ``done`` means it
    already is in that state (success). Raises FreezeError."""
    fd = _open_mount_root(mount_point, op)
    try:
        fcntl.ioctl(fd, request, 0)
    except OSError as exc:
        if exc.errno != done:
            raise _freeze_error(f"{op} ({name})", mount_point, exc.errno) from None
    finally:
        os.close(fd)


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

"""Filesystems on volume devices: detect, format (mkfs), grow, statfs.

Detection reads the superblock magic in-process (fast, no fork on the stage path)
and falls back to ``blkid -p`` for everything else, so a device holding anything
(partition table, swap, LUKS, ...) is never mistaken for a blank one. Formatting
and growing run the filesystem's own tools through :mod:`csi_py.linux.exec`.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import struct
from dataclasses import dataclass

from csi_py.linux._loop_abi import BLKGETSIZE64
from csi_py.linux.errors import CommandError, LinuxError, errno_text
from csi_py.linux.exec import find_tool, run

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
        filesystem that already fills the device is left as it is. Raises ValueError
        (unsupported type, missing mount point), ToolMissing, CommandError.
        """
        if fs_type in ("ext4", "ext3", "ext2"):
            try:
                run(["resize2fs", device], timeout=_GROW_TIMEOUT)
            except CommandError as exc:
                if "Permission denied to resize" in exc.stderr:
                    # EXT4_IOC_RESIZE_FS (online resize) requires CAP_SYS_RESOURCE.
                    raise CommandError(
                        exc.argv,
                        exc.returncode,
                        exc.stderr,
                        hint="online ext4 resize needs the CAP_SYS_RESOURCE capability "
                        "(run the node plugin privileged)",
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

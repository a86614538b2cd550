"""ext4 (and the ext2/ext3 it also grows and checks): mkfs, superblock probe, grow
with resize2fs (e2fsck first when offline resize asks for it), needs-grow from the
superblock, and the kernel's error counters."""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from csi_py.domain.units import MiB
from csi_py.linux.errors import CommandError, GrowNotPermitted, LinuxError
from csi_py.linux.exec import run
from csi_py.linux.filesystems.base import (
    CAP_SYS_RESOURCE,
    GROW_TIMEOUT,
    Filesystem,
    block_device_size,
    has_capability,
    read_device,
)

EXT_SB = 1024  # ext2/3/4 superblock offset
EXT_MAGIC_OFF = EXT_SB + 0x38

# ext feature bits that only ext4 sets (incompat: extents, 64bit, flex_bg, mmp,
# inline data, csum seed, ...; ro_compat: huge_file, gdt_csum, dir_nlink,
# extra_isize, metadata_csum, ...), as blkid distinguishes ext2/3/4.
_EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x0400 | 0x1000 | 0x2000 | 0x8000
_EXT4_RO_COMPAT = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0400
_EXT3_COMPAT_JOURNAL = 0x0004
_EXT_INCOMPAT_JOURNAL_DEV = 0x0008

EXT_TYPES = ("ext2", "ext3", "ext4")

# ext4's own error codes in s_first_error_errcode / sysfs first_error_errcode
# (EXT4_ERR_* in fs/ext4/ext4.h).
EXT4_ERRCODES = {
    1: "unknown", 2: "EIO", 3: "ENOMEM", 4: "EFSBADCRC", 5: "EFSCORRUPTED", 6: "ENOSPC",
    7: "ENOKEY", 8: "EROFS", 9: "EFBIG", 10: "EEXIST", 11: "ERANGE", 12: "EOVERFLOW",
    13: "EBUSY", 14: "ENOTDIR", 15: "ENOTEMPTY", 16: "ESHUTDOWN", 17: "EFAULT",
}  # fmt: skip


class Ext4(Filesystem):
    """ext4. The types of its facts and the contract of its calls: :class:`Filesystem`."""

    name = "ext4"
    handles = EXT_TYPES
    # mkfs.ext4 (e2fsprogs 1.47) accepts 1 MiB, but under 2 MiB it writes no journal,
    # and the journal alone takes 1 MiB of a small filesystem: 16 MiB is our floor
    # (what CreateVolume and the CLI have always promised).
    min_bytes = 16 * MiB
    label_max = 16
    # The device is a sparse file: discarding it at mkfs time only costs time.
    # Lazy init keeps mkfs of a big ext4 from writing every inode table now.
    mkfs = (
        "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
    )  # fmt: skip
    tools = ("mkfs.ext4", "resize2fs", "e2fsck")
    grows_unmounted = True
    mount_options = ()
    min_grow_bytes = 0

    def probe(self, head: bytes) -> str | None:
        if len(head) < EXT_MAGIC_OFF + 2 or head[EXT_MAGIC_OFF : EXT_MAGIC_OFF + 2] != b"\x53\xef":
            return None
        compat, incompat, ro_compat = struct.unpack_from("<III", head, EXT_SB + 0x5C)
        if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
            return "jbd"
        if incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT:
            return "ext4"
        if compat & _EXT3_COMPAT_JOURNAL:
            return "ext3"
        return "ext2"

    def can_grow_online(self) -> bool:
        # EXT4_IOC_RESIZE_FS (online resize) requires CAP_SYS_RESOURCE.
        return has_capability("CapEff", CAP_SYS_RESOURCE)

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        try:
            run(["resize2fs", device], timeout=GROW_TIMEOUT)
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
            run(["e2fsck", "-f", "-p", device], timeout=GROW_TIMEOUT, ok_returncodes=(0, 1))
            run(["resize2fs", device], timeout=GROW_TIMEOUT)

    def needs_grow(self, device: str, mount_point: str | None) -> bool:
        return _ext_needs_grow(device, block_device_size(device))

    def errors(self, device: str, mount_point: str | None) -> list[str]:
        return _ext_errors(device)


def _grow_not_permitted_message(device: str, mount_point: str | None, fs_type: str) -> str:
    where = f" mounted at {mount_point}" if mount_point else " (mounted)"
    if has_capability("CapBnd", CAP_SYS_RESOURCE):
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
    raw = read_device(device, 1024, EXT_SB)
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

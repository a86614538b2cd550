"""xfs: mkfs, superblock probe, grow with xfs_growfs (mounted only), needs-grow from
its geometry, and the health ("sick") flags the kernel keeps for it."""

from __future__ import annotations

import errno as _errno
import os
import struct

from csi_py.domain.units import MiB
from csi_py.linux.exec import run
from csi_py.linux.filesystems.base import (
    GROW_TIMEOUT,
    GrowsMounted,
    geometry_error,
    ioctl_dir,
)

_XFS_MAGIC = b"XFSB"

# <xfs/xfs_fs.h>: _IOR('X', 126, struct xfs_fsop_geom) (256 bytes, Linux 5.2+),
# _IOR('X', 124, struct xfs_fsop_geom_v4) (112 bytes), and
# _IOWR('X', 61, struct xfs_ag_geometry) (128 bytes).
XFS_IOC_FSGEOMETRY = 0x8100587E
XFS_IOC_FSGEOMETRY_V4 = 0x8070587C
XFS_IOC_AG_GEOMETRY = 0xC080583D
XFS_MIN_AG_BLOCKS = 64

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


class Xfs(GrowsMounted):
    """xfs. The types of its facts and the contract of its calls: :class:`Filesystem`."""

    name = "xfs"
    handles = ("xfs",)
    # xfsprogs >= 5.19 refuses filesystems under 300 MiB ("must be larger than 300MB").
    min_bytes = 300 * MiB
    label_max = 12
    mkfs = ("mkfs.xfs", "-q", "-f", "-K")
    tools = ("mkfs.xfs", "xfs_growfs")
    # Clones and snapshots share the filesystem UUID of their source; xfs refuses to
    # mount two filesystems with one UUID unless told otherwise.
    mount_options = ("nouuid",)
    min_grow_bytes = 0

    def probe(self, head: bytes) -> str | None:
        return "xfs" if head[:4] == _XFS_MAGIC else None

    def grow_mounted(self, mount_point: str) -> None:
        run(["xfs_growfs", "-d", mount_point], timeout=GROW_TIMEOUT)

    def needs_grow_mounted(self, device: str, mount_point: str, device_bytes: int) -> bool:
        return _xfs_needs_grow(mount_point, device_bytes)

    def errors_mounted(self, mount_point: str) -> list[str]:
        return _xfs_errors(mount_point)


def _xfs_geometry(mount_point: str) -> tuple[bytearray, bool]:
    """XFS_IOC_FSGEOMETRY output, and whether it is the v5 layout (with ``sick``).
    Raises OSError."""
    try:
        return ioctl_dir(mount_point, XFS_IOC_FSGEOMETRY, 256), True
    except OSError as exc:
        if exc.errno not in (_errno.ENOTTY, _errno.EINVAL):
            raise
    return ioctl_dir(mount_point, XFS_IOC_FSGEOMETRY_V4, 112), False  # kernels before 5.2


def _xfs_needs_grow(mount_point: str, device_bytes: int) -> bool:
    try:
        geom, _ = _xfs_geometry(mount_point)
    except OSError as exc:
        raise geometry_error("XFS_IOC_FSGEOMETRY", mount_point, exc.errno) from None
    block_size, _rtext, ag_blocks = struct.unpack_from("<III", geom, 0)
    (data_blocks,) = struct.unpack_from("<Q", geom, 32)
    blocks = device_bytes // block_size
    # xfs_growfs_data_private(): a new last AG under XFS_MIN_AG_BLOCKS is left off.
    tail = blocks % ag_blocks
    if tail and tail < XFS_MIN_AG_BLOCKS:
        blocks -= tail
    return bool(blocks > data_blocks)


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
        raise geometry_error("XFS_IOC_FSGEOMETRY", mount_point, exc.errno) from None
    if not v5:
        return []  # kernels before 5.2 keep no health state
    found = []
    sick = struct.unpack_from("<I", geom, 112)[0]
    if sick:
        found.append("unhealthy metadata: " + ", ".join(_bits(sick, XFS_FS_SICK)))
    (ag_count,) = struct.unpack_from("<I", geom, 12)
    for ag in range(ag_count):
        try:
            buf = ioctl_dir(mount_point, XFS_IOC_AG_GEOMETRY, 128, ("<I", ag))
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



"""btrfs: mkfs, superblock probe, grow with ``btrfs filesystem resize`` (mounted
only, never under 256 MiB), needs-grow from its device info, and its device error
counters."""

from __future__ import annotations

import errno as _errno
import os
import re
import struct

from csi_py.domain.units import MiB
from csi_py.linux.errors import LinuxError, errno_text
from csi_py.linux.exec import run
from csi_py.linux.filesystems.base import (
    GROW_TIMEOUT,
    GrowsMounted,
    geometry_error,
    ioctl_dir,
)

_BTRFS_MAGIC_OFF = 65536 + 64
_BTRFS_MAGIC = b"_BHRfS_M"
# The bytes of a device a probe must read to see every signature (btrfs's is last).
PROBE_BYTES = _BTRFS_MAGIC_OFF + len(_BTRFS_MAGIC)

# <linux/btrfs.h>: _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args) (1024 bytes) and
# _IOWR(0x94, 30, struct btrfs_ioctl_dev_info_args) (4096 bytes).
BTRFS_IOC_FS_INFO = 0x8400941F
BTRFS_IOC_DEV_INFO = 0xD000941E

# The kernel refuses BTRFS_IOC_RESIZE to a size under 256 MiB (fs/btrfs/ioctl.c), so a
# btrfs filesystem can only be grown to at least that.
BTRFS_MIN_RESIZE_BYTES = 256 * MiB

# The label buffer of the superblock (<linux/btrfs.h>), NUL included.
BTRFS_LABEL_SIZE = 256


class Btrfs(GrowsMounted):
    """btrfs. The types of its facts and the contract of its calls: :class:`Filesystem`."""

    name = "btrfs"
    handles = ("btrfs",)
    # mkfs.btrfs (btrfs-progs 6.2) refuses a device under 114294784 bytes (109 MiB)
    # with its default single-device profiles ("minimum size for each btrfs device").
    min_bytes = 109 * MiB
    label_max = BTRFS_LABEL_SIZE - 1
    mkfs = ("mkfs.btrfs", "-q", "-f", "-K")
    tools = ("mkfs.btrfs", "btrfs")
    mount_options = ()
    min_grow_bytes = BTRFS_MIN_RESIZE_BYTES

    def probe(self, head: bytes) -> str | None:
        return "btrfs" if head[_BTRFS_MAGIC_OFF:PROBE_BYTES] == _BTRFS_MAGIC else None

    def grow_mounted(self, mount_point: str) -> None:
        run(["btrfs", "filesystem", "resize", "max", mount_point], timeout=GROW_TIMEOUT)

    def needs_grow_mounted(self, device: str, mount_point: str, device_bytes: int) -> bool:
        return _btrfs_needs_grow(device, mount_point, device_bytes)

    def errors_mounted(self, mount_point: str) -> list[str]:
        return _btrfs_errors(mount_point)

def _btrfs_needs_grow(device: str, mount_point: str, device_bytes: int) -> bool:
    if device_bytes < BTRFS_MIN_RESIZE_BYTES:
        # The kernel refuses to resize btrfs below 256 MiB: a device that small is as
        # grown as it can be.
        return False
    try:
        info = ioctl_dir(mount_point, BTRFS_IOC_FS_INFO, 1024)
    except OSError as exc:
        raise geometry_error("BTRFS_IOC_FS_INFO", mount_point, exc.errno) from None
    max_id, num_devices = struct.unpack_from("<QQ", info, 0)
    (sector_size,) = struct.unpack_from("<I", info, 36)
    try:
        want = os.stat(device).st_rdev
    except OSError as exc:
        raise LinuxError(f"cannot stat {device}: {errno_text(exc.errno)}", device=device) from None
    sizes = []
    for devid in range(1, max_id + 1):
        try:
            dev = ioctl_dir(mount_point, BTRFS_IOC_DEV_INFO, 4096, ("<Q", devid))
        except OSError as exc:
            if exc.errno == _errno.ENODEV:
                continue  # a removed device's id
            raise geometry_error("BTRFS_IOC_DEV_INFO", mount_point, exc.errno) from None
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



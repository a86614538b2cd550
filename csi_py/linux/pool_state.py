"""The state of the filesystem that holds a pool: space, inodes, read-only or not, and
the errors its kernel driver recorded. Read-only; used by NodeGetStorageHealth and the
pool health metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass

from csi_py.linux.errors import LinuxError
from csi_py.linux.fs import SUPPORTED_FS, Filesystems
from csi_py.linux.mount import Mounter


@dataclass(frozen=True)
class PoolFsState:
    """What the kernel says about the filesystem holding one path."""

    path: str
    mount_point: str  # "" when mountinfo has no entry for it
    fs_type: str
    source: str
    total_bytes: int
    free_bytes: int  # what a non-root writer may still use
    total_inodes: int  # 0 when the filesystem has no fixed inode count (btrfs)
    free_inodes: int
    read_only: bool
    errors: str | None  # the filesystem's recorded errors, None when none or unknown


def _containing_mount(path: str) -> tuple[str, str, str, bool]:
    """(mount point, fs type, source, forced read-only) of the mount that holds
    ``path``: the deepest mountinfo entry on the same device whose mount point is a
    prefix of the path. Forced read-only: the superblock says "ro" (or ext4's
    "emergency_ro", after errors=remount-ro), which statvfs does not show."""
    try:
        st_dev = os.stat(path).st_dev
        entries = Mounter().list_mounts()
    except OSError:
        return "", "", "", False
    real = os.path.realpath(path)
    best = None
    for entry in entries:
        if os.makedev(entry.major, entry.minor) != st_dev:
            continue
        mp = entry.mount_point
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = entry
    if best is None:
        return "", "", "", False
    forced = "ro" in best.super_options or "emergency_ro" in best.super_options
    return best.mount_point, best.fs_type, best.source, forced


def pool_fs_state(path: str) -> PoolFsState:
    """The state of the filesystem holding ``path``. Idempotent, read-only.

    Raises OSError when the path cannot be reached at all (missing: ENOENT; a failed
    filesystem: EIO). Error counters are read only for ext4, xfs and btrfs on a block
    device; a failure to read them leaves ``errors`` None rather than raising.
    """
    st = os.statvfs(path)
    mount_point, fs_type, source, forced_ro = _containing_mount(path)
    errors = None
    if fs_type in SUPPORTED_FS and source.startswith("/dev/") and mount_point:
        try:
            errors = Filesystems().errors(source, mount_point, fs_type)
        except (LinuxError, OSError, ValueError):
            errors = None
    return PoolFsState(
        path=path,
        mount_point=mount_point,
        fs_type=fs_type,
        source=source,
        total_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_favail,
        read_only=bool(st.f_flag & os.ST_RDONLY) or forced_ro,
        errors=errors,
    )

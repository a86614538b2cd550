"""Thin ctypes bindings to the few libc calls Python's ``os`` module lacks
(mount, umount2, statx, renameat2). Each wrapper returns 0 or the errno and leaves
turning that into a typed error to its caller."""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
STATX_DIOALIGN = 0x2000
STATX_ATTR_MOUNT_ROOT = 0x2000
RENAME_NOREPLACE = 1


@cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno capture enabled: glibc's "libc.so.6",
    and ctypes.util.find_library (which runs ldconfig in a child process) only where
    that name is unknown (e.g. musl)."""
    try:
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes import util

        lib = ctypes.CDLL(util.find_library("c") or "libc.so", use_errno=True)
    lib.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    lib.mount.restype = ctypes.c_int
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.umount2.restype = ctypes.c_int
    return lib


def fs_bytes(path: str) -> bytes:
    """A path as the kernel sees it (undecodable bytes survive via surrogateescape)."""
    return os.fsencode(path)


def mount(
    source: str | None, target: str, fs_type: str | None, flags: int, data: str | None
) -> int:
    """mount(2); returns 0 or the errno."""
    rc = libc().mount(
        fs_bytes(source) if source is not None else None,
        fs_bytes(target),
        fs_type.encode() if fs_type else None,
        flags,
        data.encode() if data else None,
    )
    return ctypes.get_errno() if rc != 0 else 0


def umount2(target: str, flags: int) -> int:
    """umount2(2); returns 0 or the errno."""
    rc = libc().umount2(fs_bytes(target), flags)
    return ctypes.get_errno() if rc != 0 else 0


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_r", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """struct statx (256 bytes, <linux/stat.h>)."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32),
        ("stx_dio_offset_align", ctypes.c_uint32),
        ("_spare3", ctypes.c_uint64 * 12),
    ]


assert ctypes.sizeof(Statx) == 256
assert Statx.stx_dio_offset_align.offset == 0x9C


def dio_offset_align(fd: int) -> int | None:
    """The file offset alignment direct I/O needs on ``fd`` (statx STATX_DIOALIGN),
    or None when the kernel, libc or filesystem does not say. 0 means "no direct
    I/O on this file". Never raises."""
    fn = getattr(libc(), "statx", None)
    if fn is None:
        return None
    buf = Statx()
    rc = fn(fd, b"", AT_EMPTY_PATH, STATX_DIOALIGN, ctypes.byref(buf))
    if rc != 0 or not (buf.stx_mask & STATX_DIOALIGN):
        return None
    return int(buf.stx_dio_offset_align)


def is_mount_root(fd: int) -> bool | None:
    """Whether ``fd`` is the root of a mount (statx STATX_ATTR_MOUNT_ROOT, Linux
    5.8+), or None when the kernel or libc cannot say. Never raises."""
    fn = getattr(libc(), "statx", None)
    if fn is None:
        return None
    buf = Statx()
    rc = fn(fd, b"", AT_EMPTY_PATH, 0, ctypes.byref(buf))
    if rc != 0 or not (buf.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT):
        return None
    return bool(buf.stx_attributes & STATX_ATTR_MOUNT_ROOT)


def renameat2_noreplace(src: str, dst: str) -> int:
    """renameat2(src, dst, RENAME_NOREPLACE); returns 0 or the errno (ENOSYS when
    libc lacks the wrapper)."""
    fn = getattr(libc(), "renameat2", None)
    if fn is None:
        return errno.ENOSYS
    rc = fn(AT_FDCWD, fs_bytes(src), AT_FDCWD, fs_bytes(dst), RENAME_NOREPLACE)
    return ctypes.get_errno() if rc != 0 else 0

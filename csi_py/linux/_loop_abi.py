"""Kernel ABI of loop devices: ioctl numbers, flags and structures (<linux/loop.h>).

Kept apart from the logic so the layout can be checked against the header in one
place (see tests/integration/test_linux_loop.py, which compares with
/usr/include/linux/loop.h when it is installed).
"""

from __future__ import annotations

import ctypes

LO_NAME_SIZE = 64
LO_KEY_SIZE = 32

# ioctls on /dev/loopN
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_SET_CAPACITY = 0x4C07
LOOP_SET_DIRECT_IO = 0x4C08
LOOP_SET_BLOCK_SIZE = 0x4C09
LOOP_CONFIGURE = 0x4C0A
# ioctls on /dev/loop-control
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16

# Block device ioctls (<linux/fs.h>): _IOR(0x12, 114, size_t) and _IO(0x12, 104).
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268

LOOP_MAJOR = 7


class LoopInfo64(ctypes.Structure):
    """struct loop_info64 (232 bytes)."""

    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32), ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32), ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    """struct loop_config (304 bytes): the LOOP_CONFIGURE argument."""

    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


assert ctypes.sizeof(LoopInfo64) == 232, "struct loop_info64 must be 232 bytes"
assert ctypes.sizeof(LoopConfig) == 304, "struct loop_config must be 304 bytes"
assert LoopConfig.info.offset == 8


def file_name_field(path: str) -> bytes:
    """``lo_file_name`` for ``path``: at most 63 bytes, as the kernel forces the 64th
    to NUL. Informational only; sysfs ``backing_file`` has the full path."""
    return path.encode("utf-8", "surrogateescape")[: LO_NAME_SIZE - 1]

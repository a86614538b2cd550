"""Attaching a file to a free loop device: LOOP_CTL_GET_FREE + LOOP_CONFIGURE (one atomic
ioctl that sets the file, flags, direct I/O and block size), with the classic
LOOP_SET_FD + LOOP_SET_STATUS64 sequence only for kernels older than 5.8, and the races
with other attachers handled.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import stat
import time

from csi_py.linux import _libc
from csi_py.linux._loop_abi import (
    LO_FLAGS_DIRECT_IO,
    LO_FLAGS_READ_ONLY,
    LOOP_CLR_FD,
    LOOP_CONFIGURE,
    LOOP_CTL_ADD,
    LOOP_CTL_GET_FREE,
    LOOP_SET_BLOCK_SIZE,
    LOOP_SET_DIRECT_IO,
    LOOP_SET_FD,
    LOOP_SET_STATUS64,
    LoopConfig,
    LoopInfo64,
    file_name_field,
)
from csi_py.linux.errors import LoopError, errno_text
from csi_py.linux.loop_sysfs import (
    _NAME,
    LoopDevice,
    LoopSysfs,
    _read,
    mentions_loop,
    referenced_loop_numbers,
)

LOOP_CONTROL = "/dev/loop-control"
# How often attach() retries when another process takes the free device first.
_ATTACH_ATTEMPTS = 32


class _Taken(Exception):
    """Another process configured the free device before us; try another one."""


class LoopAttacher(LoopSysfs):
    """Attaches files to loop devices. Stateless; safe to share."""

    # ---- attach ----------------------------------------------------------------

    def attach(
        self,
        backing_file: str,
        *,
        direct_io: bool = True,
        read_only: bool = False,
        block_size: int | None = None,
    ) -> LoopDevice:
        """Bind ``backing_file`` to a free loop device and return it.

        NOT idempotent: each call takes a new device (use find_by_backing_file
        first). Direct I/O is requested with LO_FLAGS_DIRECT_IO; when the backing
        filesystem cannot do it the device runs buffered and the result says
        ``direct_io=False``. The logical block size is ``block_size`` if given,
        else the direct-I/O alignment of the backing file (at least 512), so it is
        the same every time the same pool attaches the file. Autoclear and
        partition scanning are never set. Retries (bounded) when another process
        takes the free device first. Raises LoopError (errno ENOENT/EACCES/EISDIR
        for a bad backing file), ValueError for a block size that is not a power of
        two from 512 to 4096.
        """
        if block_size is not None and (block_size not in (512, 1024, 2048, 4096)):
            raise ValueError(f"loop block size must be 512, 1024, 2048 or 4096, not {block_size}")
        path = os.path.abspath(backing_file)
        mode = os.O_RDONLY if read_only else os.O_RDWR
        try:
            # Checked before open() too: opening a FIFO would block.
            if stat.S_ISFIFO(os.stat(path).st_mode):
                raise OSError(_errno.EINVAL, "not a regular file")
            bfd = os.open(path, mode | os.O_CLOEXEC)
        except OSError as exc:
            raise LoopError(
                f"cannot open backing file {path}: {errno_text(exc.errno)}",
                device=None,
                errno=exc.errno,
                backing_file=path,
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(bfd).st_mode):
                raise LoopError(
                    f"backing file {path} is not a regular file",
                    device=None,
                    errno=_errno.EINVAL,
                    backing_file=path,
                )
            bs = block_size if block_size is not None else self._block_size_for(bfd)
            for _ in range(_ATTACH_ATTEMPTS):
                number = self._unreferenced_free(path)
                try:
                    dfd = self._open_node(number, os.O_RDWR)
                except LoopError as exc:
                    # Removed (LOOP_CTL_REMOVE) by someone between GET_FREE and open.
                    if exc.errno in (_errno.ENXIO, _errno.ENODEV, _errno.ENOENT):
                        continue
                    raise
                try:
                    self._configure(dfd, bfd, number, path, bs, direct_io, read_only)
                except _Taken:
                    time.sleep(0.001)
                    continue
                finally:
                    os.close(dfd)
                dev = self._describe(number)
                if dev is None:
                    raise LoopError(
                        f"{self._node(number)} was detached by someone else right after "
                        f"attaching {path}",
                        device=self._node(number),
                        errno=_errno.ENXIO,
                        backing_file=path,
                    )
                return dev
            raise LoopError(
                f"could not attach {path}: other processes took {_ATTACH_ATTEMPTS} free "
                "loop devices in a row",
                device=None,
                errno=_errno.EBUSY,
                backing_file=path,
            )
        finally:
            os.close(bfd)

    def _configure(
        self,
        dfd: int,
        bfd: int,
        number: int,
        path: str,
        block_size: int,
        direct_io: bool,
        read_only: bool,
    ) -> None:
        flags = LO_FLAGS_READ_ONLY if read_only else 0
        attempts = [flags | LO_FLAGS_DIRECT_IO, flags] if direct_io else [flags]
        for lo_flags in attempts:
            cfg = LoopConfig(fd=bfd, block_size=block_size)
            cfg.info.lo_flags = lo_flags
            name = file_name_field(path)
            cfg.info.lo_file_name[: len(name)] = list(name)
            try:
                fcntl.ioctl(dfd, LOOP_CONFIGURE, bytes(cfg))
                return
            except OSError as exc:
                if exc.errno == _errno.EBUSY:
                    raise _Taken() from None
                if exc.errno == _errno.ENOTTY:
                    break  # kernel < 5.8: no LOOP_CONFIGURE
                if exc.errno != _errno.EINVAL:
                    raise self._error("LOOP_CONFIGURE", number, path, exc.errno) from None
                # EINVAL: a kernel that rejects the direct I/O flag (retry buffered),
                # or one that does not know LOOP_CONFIGURE (fall through to legacy).
        self._configure_legacy(dfd, bfd, number, path, block_size, direct_io)

    def _configure_legacy(
        self, dfd: int, bfd: int, number: int, path: str, block_size: int, direct_io: bool
    ) -> None:
        # Read-only comes from the backing fd's open mode here.
        try:
            fcntl.ioctl(dfd, LOOP_SET_FD, bfd)
        except OSError as exc:
            if exc.errno == _errno.EBUSY:
                raise _Taken() from None
            raise self._error("LOOP_SET_FD", number, path, exc.errno) from None
        try:
            info = LoopInfo64()
            name = file_name_field(path)
            info.lo_file_name[: len(name)] = list(name)
            fcntl.ioctl(dfd, LOOP_SET_STATUS64, bytes(info))
            if block_size != 512:
                fcntl.ioctl(dfd, LOOP_SET_BLOCK_SIZE, block_size)
        except OSError as exc:
            _clear_quietly(dfd)
            raise self._error("LOOP_SET_STATUS64", number, path, exc.errno) from None
        if direct_io:
            try:
                fcntl.ioctl(dfd, LOOP_SET_DIRECT_IO, 1)
            except OSError:
                pass  # stays buffered; the returned LoopDevice says so

    def _unreferenced_free(self, path: str) -> int:
        """A free loop number that no mount references. A device detached behind
        our back (losetup -d) leaves the bind mounts of its node in place, and they
        reach whatever file the number is attached to next: handing that number to
        another volume would let one pod read and write another's data. So such a
        number is skipped, and a new device is added past every number in use."""
        number = self._get_free(path)
        if not mentions_loop(number):
            return number  # the usual case: no mount names it, nothing to parse
        referenced = referenced_loop_numbers()
        if number not in referenced:
            return number
        existing = [int(m.group(1)) for m in map(_NAME.fullmatch, os.listdir(self._sys)) if m]
        candidate = max([number, *existing, *referenced]) + 1
        try:
            cfd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error("open " + LOOP_CONTROL, candidate, path, exc.errno) from None
        try:
            fcntl.ioctl(cfd, LOOP_CTL_ADD, candidate)
        except OSError as exc:
            if exc.errno != _errno.EEXIST:  # added by someone else just now: use it
                raise self._error("LOOP_CTL_ADD", candidate, path, exc.errno) from None
        finally:
            os.close(cfd)
        return candidate

    def _get_free(self, path: str) -> int:
        try:
            cfd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise LoopError(
                f"cannot open {LOOP_CONTROL} to attach {path}: {errno_text(exc.errno)} "
                "(is the loop module loaded and /dev mounted from the host?)",
                device=None,
                errno=exc.errno,
                backing_file=path,
            ) from None
        try:
            return fcntl.ioctl(cfd, LOOP_CTL_GET_FREE)
        except OSError as exc:
            raise LoopError(
                f"no free loop device for {path}: LOOP_CTL_GET_FREE failed: "
                f"{errno_text(exc.errno)}",
                device=None,
                errno=exc.errno,
                backing_file=path,
            ) from None
        finally:
            os.close(cfd)

    def _block_size_for(self, bfd: int) -> int:
        # Direct I/O needs the loop device's logical block size to be at least the
        # backing file's DIO alignment, and the block size must not change between
        # attachments (a filesystem made on 512-byte sectors may not mount on 4K
        # ones). So it depends on where the file lives, not on the direct_io flag.
        align = _libc.dio_offset_align(bfd)
        if not align:
            align = _backing_bdev_block_size(os.fstat(bfd).st_dev)
        if align and align & (align - 1) == 0 and 512 <= align <= 4096:
            return align
        return 512


def _backing_bdev_block_size(st_dev: int) -> int | None:
    """Logical block size of the block device holding a filesystem, if it has one
    (tmpfs, overlay and btrfs use anonymous device numbers and have none)."""
    base = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}"
    for rel in ("queue/logical_block_size", "../queue/logical_block_size"):  # disk, partition
        value = _read(os.path.join(base, rel))
        if value and value.isdigit():
            return int(value)
    return None


def _clear_quietly(dfd: int) -> None:
    try:
        fcntl.ioctl(dfd, LOOP_CLR_FD)
    except OSError:
        pass

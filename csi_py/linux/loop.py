"""Loop devices through their ioctls: LoopManager attaches (loop_attach.py), detaches,
and changes an attached device (capacity, direct I/O, read-ahead, flush); discovery
through sysfs is loop_sysfs.py's.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os

from csi_py.domain.retry import tries
from csi_py.linux import files
from csi_py.linux._loop_abi import (
    LO_FLAGS_AUTOCLEAR,
    LOOP_CLR_FD,
    LOOP_GET_STATUS64,
    LOOP_SET_CAPACITY,
    LOOP_SET_DIRECT_IO,
    LOOP_SET_STATUS64,
    LoopInfo64,
)
from csi_py.linux.errors import DeviceBusy, LoopError
from csi_py.linux.loop_attach import LOOP_CONTROL, LoopAttacher
from csi_py.linux.loop_sysfs import (
    DELETED_SUFFIX,
    SYS_BLOCK,
    LoopDevice,
    _read,
    is_path_tail,
    referenced_loop_numbers,
)
from csi_py.linux.mountinfo import MAX_TABLE, parse_mountinfo

# How long detach() waits for the kernel to let go of the device.
_DETACH_WAIT = 2.0
# Bounds of set_read_ahead(), in KiB (64 MiB is far beyond any useful read-ahead).
READ_AHEAD_MAX_KIB = 65536


class LoopManager(LoopAttacher):
    """Attach, detach and inspect loop devices. Stateless; safe to share."""

    # ---- detach ----------------------------------------------------------------

    def detach(self, device_path: str) -> None:
        """Unbind the loop device at ``device_path``.

        Idempotent: a device that is already free (or gone) is success. Raises
        DeviceBusy if the device is mounted, has holders (dm/md), or is still held
        open by someone after a short wait; in that last case the autoclear flag
        LOOP_CLR_FD leaves behind is removed again, so a busy device stays attached
        exactly as before. Raises LoopError for a path that is not a loop device or
        another ioctl failure.
        """
        number = self._number(device_path)
        if number is None:
            raise LoopError(
                f"{device_path} is not a loop device", device=device_path, errno=_errno.ENOTBLK
            )
        before = self._describe(number, identity=False)
        if before is None:
            return
        node = self._node(number)
        self._refuse_if_in_use(number, node)
        try:
            dfd = self._open_node(number, os.O_RDONLY)
        except LoopError as exc:
            if exc.errno in (_errno.ENXIO, _errno.ENODEV):
                return
            raise
        try:
            fcntl.ioctl(dfd, LOOP_CLR_FD)
        except OSError as exc:
            if exc.errno == _errno.ENXIO:
                return
            if exc.errno == _errno.EBUSY:
                raise DeviceBusy(f"{node} is busy: LOOP_CLR_FD refused", device=node) from None
            raise self._error("LOOP_CLR_FD", number, before.backing_file, exc.errno) from None
        finally:
            # Since Linux 5.x LOOP_CLR_FD only marks the device; the unbinding runs
            # when the last opener closes it, which may be this close().
            os.close(dfd)
        for _ in tries(_DETACH_WAIT, 0.0005, 0.05):
            now = self._describe(number, identity=False)
            if now is None or now.backing_file != before.backing_file:
                return
        if not before.autoclear:
            self._clear_autoclear(number)
        raise DeviceBusy(
            f"{node} (backing file {before.backing_file}) is still open by another "
            f"process after {_DETACH_WAIT:g}s; not detached",
            device=node,
            path=before.backing_file,
        )

    def _refuse_if_in_use(self, number: int, node: str) -> None:
        base = os.path.join(self._sys, f"loop{number}")
        try:
            holders = os.listdir(os.path.join(base, "holders"))
        except OSError:
            holders = []
        if holders:
            raise DeviceBusy(f"{node} is in use by {', '.join(holders)}", device=node)
        dev = _read(os.path.join(base, "dev"))
        raw = files.read_small("/proc/self/mountinfo", MAX_TABLE)
        # Parsed only when it names the device at all: on the unstage path the mounts
        # were just taken down, and a node may have thousands of others.
        if (dev is None or f" {dev} ".encode() not in raw) and \
                f" {node} ".encode() not in raw:
            return
        for m in parse_mountinfo(os.fsdecode(raw)):
            # btrfs reports an anonymous device number, so match the source too.
            if f"{m.major}:{m.minor}" == dev or m.source == node:
                raise DeviceBusy(
                    f"{node} is mounted at {m.mount_point} ({m.fs_type}); unmount it first",
                    device=node,
                    path=m.mount_point,
                )

    def _clear_autoclear(self, number: int) -> None:
        try:
            dfd = self._open_node(number, os.O_RDONLY)
        except LoopError:
            return
        try:
            buf = bytearray(232)
            fcntl.ioctl(dfd, LOOP_GET_STATUS64, buf, True)
            info = LoopInfo64.from_buffer_copy(buf)
            if info.lo_flags & LO_FLAGS_AUTOCLEAR:
                info.lo_flags &= ~LO_FLAGS_AUTOCLEAR
                fcntl.ioctl(dfd, LOOP_SET_STATUS64, bytes(info))
        except OSError:
            pass  # ENXIO: it detached after all, which is fine
        finally:
            os.close(dfd)

    # ---- changes to an attached device -----------------------------------------

    def refresh_capacity(self, device_path: str) -> None:
        """Make the device pick up its backing file's new size (LOOP_SET_CAPACITY).
        Idempotent. Raises LoopError if it is not an attached loop device."""
        number = self._require(device_path)
        self._simple_ioctl(number, LOOP_SET_CAPACITY, 0, "LOOP_SET_CAPACITY")

    def set_direct_io(self, device_path: str, enabled: bool) -> None:
        """Switch direct I/O on or off (LOOP_SET_DIRECT_IO). Idempotent. Raises
        LoopError (EINVAL) if the backing file cannot do direct I/O, or if the
        device is not attached."""
        number = self._require(device_path)
        self._simple_ioctl(number, LOOP_SET_DIRECT_IO, 1 if enabled else 0, "LOOP_SET_DIRECT_IO")
        dev = self._describe(number)
        if dev is not None and dev.direct_io != enabled:
            raise LoopError(
                f"{dev.path}: the kernel did not {'enable' if enabled else 'disable'} "
                f"direct I/O for {dev.backing_file}",
                device=dev.path,
                errno=_errno.EINVAL,
                backing_file=dev.backing_file,
            )

    def set_read_ahead(self, device_path: str, kib: int) -> None:
        """Set the device's read-ahead to ``kib`` KiB (sysfs queue/read_ahead_kb).

        The kernel keeps it in pages, so it reads back rounded down to the page size
        (4 KiB). It belongs to the device, not the backing file, and outlives the
        attachment: a new one starts at the larger of what the last user left and
        the queue's default (recent kernels, e.g. 6.18, never lower it when they
        apply queue limits), so set it after every attach when it matters.
        Idempotent. Raises ValueError unless 0 <= kib <= 65536,
        LoopError if the device is not attached (ENXIO) or sysfs refuses the write.
        """
        if isinstance(kib, bool) or not isinstance(kib, int) or not 0 <= kib <= READ_AHEAD_MAX_KIB:
            raise ValueError(f"read-ahead must be 0 to {READ_AHEAD_MAX_KIB} KiB, not {kib!r}")
        number = self._require(device_path)
        try:
            with open(self._read_ahead_path(number), "w") as f:
                f.write(str(kib))
        except OSError as exc:
            raise self._error("setting read_ahead_kb", number, None, exc.errno) from None

    def get_read_ahead(self, device_path: str) -> int:
        """The device's read-ahead in KiB (sysfs queue/read_ahead_kb). Read-only.
        Raises LoopError if the device is not attached (ENXIO)."""
        number = self._require(device_path)
        value = _read(self._read_ahead_path(number))
        if value is None or not value.isdigit():
            raise self._error("reading read_ahead_kb", number, None, _errno.ENXIO)
        return int(value)

    def flush(self, device_path: str) -> None:
        """Make writes to the device reach its backing file, e.g. before copying
        the file for a snapshot of a block volume: fsync on the device flushes its
        page cache into the loop driver and then sends it a flush, which the loop
        driver turns into an fsync of the backing file. (BLKFLSBUF would also drop
        the device's clean cache and needs CAP_SYS_ADMIN, for nothing more here.)
        For a mounted filesystem use Filesystems.freeze instead: this does not
        flush the filesystem's own dirty data. Idempotent. Raises LoopError if the
        device is not attached (ENXIO) or the flush fails (EIO).
        """
        number = self._require(device_path)
        dfd = self._open_node(number, os.O_RDONLY)
        try:
            os.fsync(dfd)
        except OSError as exc:
            raise self._error("fsync", number, None, exc.errno) from None
        finally:
            os.close(dfd)

    def _read_ahead_path(self, number: int) -> str:
        return os.path.join(self._sys, f"loop{number}", "queue", "read_ahead_kb")

    def _simple_ioctl(self, number: int, request: int, arg: int, name: str) -> None:
        dfd = self._open_node(number, os.O_RDONLY)
        try:
            fcntl.ioctl(dfd, request, arg)
        except OSError as exc:
            raise self._error(name, number, None, exc.errno) from None
        finally:
            os.close(dfd)


__all__ = [
    "DELETED_SUFFIX",
    "LOOP_CONTROL",
    "SYS_BLOCK",
    "LoopDevice",
    "LoopError",
    "LoopManager",
    "is_path_tail",
    "referenced_loop_numbers",
]

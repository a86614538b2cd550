"""Loop devices through their ioctls; discovery through sysfs.

The kernel is the truth for attachments (DESIGN.md principle 2): what is attached is
read from /sys/block/loopN/loop/* every time, /dev is never scanned and nothing is
remembered between calls. Attaching uses LOOP_CTL_GET_FREE + LOOP_CONFIGURE (one
atomic ioctl that sets the file, flags, direct I/O and block size), with the classic
LOOP_SET_FD + LOOP_SET_STATUS64 sequence only for kernels older than 5.8.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import re
import stat
import time
from dataclasses import dataclass, field

from csi_py.linux import _libc, files
from csi_py.linux._loop_abi import (
    LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_DIRECT_IO,
    LO_FLAGS_READ_ONLY,
    LOOP_CLR_FD,
    LOOP_CONFIGURE,
    LOOP_CTL_ADD,
    LOOP_CTL_GET_FREE,
    LOOP_GET_STATUS64,
    LOOP_MAJOR,
    LOOP_SET_BLOCK_SIZE,
    LOOP_SET_CAPACITY,
    LOOP_SET_DIRECT_IO,
    LOOP_SET_FD,
    LOOP_SET_STATUS64,
    LoopConfig,
    LoopInfo64,
    file_name_field,
)
from csi_py.linux.errors import DeviceBusy, LoopError, errno_text
from csi_py.linux.mount import MAX_TABLE, parse_mountinfo

LOOP_CONTROL = "/dev/loop-control"
SYS_BLOCK = "/sys/block"
DELETED_SUFFIX = " (deleted)"

_NAME = re.compile(r"loop(\d+)")
# How often attach() retries when another process takes the free device first.
_ATTACH_ATTEMPTS = 32
# How long detach() waits for the kernel to let go of the device.
_DETACH_WAIT = 2.0
# How long to wait for devtmpfs/udev to create /dev/loopN before making it ourselves.
_NODE_WAIT = 0.5
# Bounds of set_read_ahead(), in KiB (64 MiB is far beyond any useful read-ahead).
READ_AHEAD_MAX_KIB = 65536


@dataclass(frozen=True)
class LoopDevice:
    """An attached loop device as sysfs describes it right now."""

    path: str  # "/dev/loop7"
    number: int
    backing_file: str  # as sysfs reports it, " (deleted)" suffix stripped
    backing_deleted: bool
    size_bytes: int
    direct_io: bool
    read_only: bool
    logical_block_size: int = 512
    # Set when the device will detach itself on last close (e.g. after LOOP_CLR_FD
    # on a device someone still holds open).
    autoclear: bool = False
    # The backing file's identity (st_dev, st_ino) as the kernel holds it
    # (LOOP_GET_STATUS64); 0, 0 when it was not read (list_attached() skips it) or
    # could not be. A path can be replaced, an identity cannot: a device is matched
    # to an image by both. Not part of equality: the same device, read either way.
    backing_dev: int = field(default=0, compare=False)
    backing_inode: int = field(default=0, compare=False)


class _Taken(Exception):
    """Another process configured the free device before us; try another one."""


class LoopManager:
    """Attach, detach and inspect loop devices. Stateless; safe to share."""

    def __init__(self, sys_block: str = SYS_BLOCK, dev_dir: str = "/dev"):
        self._sys = sys_block
        self._dev = dev_dir

    # ---- discovery -------------------------------------------------------------

    def list_attached(self) -> list[LoopDevice]:
        """Every loop device bound to a file, by number. Read from sysfs only;
        devices that detach while being read are left out. Never raises for races."""
        devices = []
        for name in os.listdir(self._sys):
            m = _NAME.fullmatch(name)
            if m:
                dev = self._describe(int(m.group(1)), identity=False)
                if dev is not None:
                    devices.append(dev)
        return sorted(devices, key=lambda d: d.number)

    def find_by_backing_file(self, backing_file: str) -> list[LoopDevice]:
        """Devices whose backing file is ``backing_file``: the same path (both sides
        through os.path.realpath), or a path that is a tail of it naming the same file
        (device and inode, from LOOP_GET_STATUS64). Usually zero or one; more than one
        means someone attached the file twice. Never raises for races."""
        want = os.path.realpath(backing_file)
        want_identity: tuple[int, int] | None = None
        found = []
        # Only each device's backing_file is read; the rest of sysfs only for a match
        # (the delete and stage paths ask this, and a node may have many devices).
        for name in os.listdir(self._sys):
            m = _NAME.fullmatch(name)
            if not m:
                continue
            backing = _read(os.path.join(self._sys, name, "loop", "backing_file"),
                            strip_all=False)
            if backing is None:
                continue
            backing = backing.removesuffix(DELETED_SUFFIX)
            # The kernel prints the path it resolved at attach time; realpath only
            # for a path that does not already match (e.g. a symlinked pool).
            match = backing == want or os.path.realpath(backing) == want
            if not match and is_path_tail(backing, want):
                # See is_path_tail: a tail proves nothing; the inode does.
                if want_identity is None:
                    want_identity = files.identity(want)
                match = want_identity is not None and \
                    self._backing_identity(int(m.group(1))) == want_identity
            if match:
                dev = self._describe(int(m.group(1)))
                if dev is not None:
                    found.append(dev)
        return sorted(found, key=lambda d: d.number)

    def get(self, device_path: str) -> LoopDevice | None:
        """The attached loop device at ``device_path``, or None if it is not a loop
        device or not bound to a file. Never raises."""
        number = self._number(device_path)
        return None if number is None else self._describe(number)

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
        deadline = time.monotonic() + _DETACH_WAIT
        delay = 0.0005
        while True:
            now = self._describe(number, identity=False)
            if now is None or now.backing_file != before.backing_file:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
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
        mounts = parse_mountinfo(os.fsdecode(files.read_small("/proc/self/mountinfo",
                                                              MAX_TABLE)))
        for m in mounts:
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

    def _require(self, device_path: str) -> int:
        number = self._number(device_path)
        if number is None or self._describe(number) is None:
            raise LoopError(
                f"{device_path} is not an attached loop device",
                device=device_path,
                errno=_errno.ENXIO,
            )
        return number

    def _simple_ioctl(self, number: int, request: int, arg: int, name: str) -> None:
        dfd = self._open_node(number, os.O_RDONLY)
        try:
            fcntl.ioctl(dfd, request, arg)
        except OSError as exc:
            raise self._error(name, number, None, exc.errno) from None
        finally:
            os.close(dfd)

    # ---- helpers ---------------------------------------------------------------

    def _node(self, number: int) -> str:
        return os.path.join(self._dev, f"loop{number}")

    def _number(self, device_path: str) -> int | None:
        """The loop number behind ``device_path``: by the node's device number when
        it exists (so any node or bind mount of one works), else by its name."""
        name = os.path.basename(device_path)
        try:
            st = os.stat(device_path)
        except OSError:
            st = None
        if st is not None:
            if not stat.S_ISBLK(st.st_mode) or os.major(st.st_rdev) != LOOP_MAJOR:
                return None
            try:
                name = os.path.basename(
                    os.readlink(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
                )
            except OSError:
                pass  # a stale node of a removed device: go by its name
        m = _NAME.fullmatch(name)
        return int(m.group(1)) if m else None

    def _open_node(self, number: int, flags: int) -> int:
        node = self._node(number)
        deadline = time.monotonic() + _NODE_WAIT
        while True:
            try:
                return os.open(node, flags | os.O_CLOEXEC)
            except FileNotFoundError:
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                # A /dev that is not devtmpfs (e.g. a container's private tmpfs)
                # never gets nodes for devices created after it was populated.
                self._make_node(number)
                deadline = float("inf")
                try:
                    return os.open(node, flags | os.O_CLOEXEC)
                except OSError as exc:
                    raise self._error("open", number, None, exc.errno) from None
            except OSError as exc:
                raise self._error("open", number, None, exc.errno) from None

    def _make_node(self, number: int) -> None:
        dev = _read(os.path.join(self._sys, f"loop{number}", "dev"))
        if dev is None:
            raise LoopError(
                f"{self._node(number)} does not exist", device=self._node(number),
                errno=_errno.ENOENT,
            )  # fmt: skip
        major, minor = (int(x) for x in dev.split(":"))
        try:
            os.mknod(self._node(number), stat.S_IFBLK | 0o660, os.makedev(major, minor))
        except FileExistsError:
            pass
        except OSError as exc:
            raise self._error("mknod", number, None, exc.errno) from None

    def _describe(self, number: int, identity: bool = True) -> LoopDevice | None:
        """The device as sysfs shows it, or None when it is not bound to a file.
        `identity`: also read the backing file's identity, which opens the device
        node (LOOP_GET_STATUS64); scans of every device on the node and the wait for
        a detach skip it, so as never to hold someone else's device open."""
        base = os.path.join(self._sys, f"loop{number}")
        backing = _read(os.path.join(base, "loop", "backing_file"), strip_all=False)
        if backing is None:
            return None
        deleted = backing.endswith(DELETED_SUFFIX)
        if deleted:
            backing = backing[: -len(DELETED_SUFFIX)]
        values = [
            _read(os.path.join(base, rel))
            for rel in ("size", "loop/dio", "ro", "queue/logical_block_size", "loop/autoclear")
        ]
        if any(v is None for v in values):
            return None  # detached while we were reading
        size, dio, ro, lbs, autoclear = (v or "0" for v in values)
        backing_dev, backing_inode = self._backing_identity(number) if identity else (0, 0)
        return LoopDevice(
            path=self._node(number),
            number=number,
            backing_file=backing,
            backing_deleted=deleted,
            size_bytes=int(size) * 512,
            direct_io=dio == "1",
            read_only=ro == "1",
            logical_block_size=int(lbs),
            autoclear=autoclear == "1",
            backing_dev=backing_dev,
            backing_inode=backing_inode,
        )

    def _backing_identity(self, number: int) -> tuple[int, int]:
        """(st_dev, st_ino) of the backing file from LOOP_GET_STATUS64, or (0, 0)
        when the node cannot be opened or the device detached meanwhile."""
        try:
            dfd = os.open(self._node(number), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return 0, 0
        try:
            buf = bytearray(ctypes.sizeof(LoopInfo64))
            fcntl.ioctl(dfd, LOOP_GET_STATUS64, buf, True)
        except OSError:
            return 0, 0
        finally:
            os.close(dfd)
        info = LoopInfo64.from_buffer_copy(buf)
        return int(info.lo_device), int(info.lo_inode)

    def _error(self, op: str, number: int, backing: str | None, err: int | None) -> LoopError:
        node = self._node(number)
        about = f" (backing file {backing})" if backing else ""
        return LoopError(
            f"{op} on {node}{about} failed: {errno_text(err)}",
            device=node,
            errno=err,
            backing_file=backing,
        )


_NODE_ROOT = re.compile(r"/loop(\d+)")


def referenced_loop_numbers(mountinfo: str = "/proc/self/mountinfo") -> set[int]:
    """Loop numbers that some mount still refers to: a filesystem on /dev/loopN, or
    the node /dev/loopN bind-mounted onto a file (a published block volume, whose
    mount outlives a detach of the device). Read-only; never raises (an unreadable
    mount table refers to nothing)."""
    try:
        mounts = parse_mountinfo(os.fsdecode(files.read_small(mountinfo, MAX_TABLE)))
    except OSError:
        return set()
    found = set()
    for m in mounts:
        named = _NAME.fullmatch(os.path.basename(m.source)) if m.source.startswith("/dev/") \
            else None
        node = _NODE_ROOT.fullmatch(m.root) if m.fs_type in ("devtmpfs", "tmpfs") else None
        for match in (named, node):
            if match:
                found.add(int(match.group(1)))
    return found


def is_path_tail(shown: str, path: str) -> bool:
    """Whether the backing path the kernel shows may be `path` seen from elsewhere.

    The kernel prints a backing file's path from the root of the mount it was opened
    through; when that mount is out of this process's reach (a node plugin container
    that restarted sees the devices its predecessor attached through a bind mount that
    died with it) the path is only the tail below that mount's root, for example
    "/pool/volumes/<id>.img". A tail never proves the file: callers compare the
    backing identity (st_dev, st_ino) too. Pure."""
    return shown.startswith("/") and shown != path and path.endswith(shown)


def _read(path: str, *, strip_all: bool = True) -> str | None:
    """A sysfs attribute without its trailing newline, or None if it is gone."""
    try:
        raw = os.fsdecode(files.read_small(path, 1 << 16))
    except OSError:
        return None
    # backing_file may legitimately end in spaces: only drop the kernel's newline.
    return raw.strip() if strip_all else raw.removesuffix("\n")


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

"""Loop devices as sysfs shows them: the LoopDevice record, discovery (list, find by
backing file, the holders of a file, get), the device nodes, and the backing identity
from LOOP_GET_STATUS64.

The kernel is the truth for attachments: what is attached is read from
/sys/block/loopN/loop/* every time (or, for "is this file attached at all", asked of
the file itself through a lease), /dev is never scanned and nothing is remembered
between calls.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import re
import signal
import stat
from dataclasses import dataclass, field

from csi_py.domain.retry import tries
from csi_py.linux import files
from csi_py.linux._loop_abi import LOOP_GET_STATUS64, LOOP_MAJOR, LoopInfo64
from csi_py.linux.errors import LoopError, errno_text
from csi_py.linux.mountinfo import MAX_TABLE, parse_mountinfo

SYS_BLOCK = "/sys/block"
DELETED_SUFFIX = " (deleted)"

_NAME = re.compile(r"loop(\d+)")
# How long to wait for devtmpfs/udev to create /dev/loopN before making it ourselves.
_NODE_WAIT = 0.5
_NODE_POLL = 0.005  # between looks for it


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


class LoopSysfs:
    """Reads loop devices from sysfs and opens their nodes. Stateless; safe to share."""

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

    def attached_to(self, backing_file: str) -> list[LoopDevice]:
        """The devices attached to ``backing_file`` (as find_by_backing_file finds
        them), without reading every device's sysfs when none is: a loop device keeps
        an open reference to its backing file, and the kernel grants a write lease
        only on a file nobody else holds open (by its inode, whatever path or hard
        link it was opened by, attached by us or by anyone else). So a lease granted
        (and dropped at once) proves no loop device holds the file: no scan. Only
        when the lease is refused (someone holds the file: a loop device, or a
        process reading it) or cannot be asked for (a filesystem without leases,
        leases turned off, the file missing) are the devices scanned, to name them.
        Read-only; never raises for races."""
        if held_open(backing_file) is False:
            return []
        return self.find_by_backing_file(backing_file)

    def held_open(self, backing_file: str) -> bool | None:
        """Whether anything holds the file open (held_open below): a loop device,
        whatever path or link it was attached by, or a process. Never raises."""
        return held_open(backing_file)

    def get(self, device_path: str) -> LoopDevice | None:
        """The attached loop device at ``device_path``, or None if it is not a loop
        device or not bound to a file. Never raises."""
        number = self._number(device_path)
        return None if number is None else self._describe(number)

    def _require(self, device_path: str) -> int:
        """The number of the attached loop device at `device_path`; raises LoopError
        (ENXIO) when it is not one. Reads one sysfs attribute, not the whole device."""
        number = self._number(device_path)
        if number is None or _read(os.path.join(self._sys, f"loop{number}", "loop",
                                                "backing_file"), strip_all=False) is None:
            raise LoopError(
                f"{device_path} is not an attached loop device",
                device=device_path,
                errno=_errno.ENXIO,
            )
        return number

    # ---- nodes and attributes --------------------------------------------------

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
        for _ in tries(_NODE_WAIT, _NODE_POLL, _NODE_POLL):
            try:
                return os.open(node, flags | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # udev or devtmpfs has not made it yet
            except OSError as exc:
                raise self._error("open", number, None, exc.errno) from None
        # A /dev that is not devtmpfs (e.g. a container's private tmpfs) never gets
        # nodes for devices created after it was populated.
        self._make_node(number)
        try:
            return os.open(node, flags | os.O_CLOEXEC)
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


def mentions_loop(number: int, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether the mount table names loop `number` at all ("/loopN " as a source or a
    devtmpfs root): False proves no mount refers to it; True only that one may
    (referenced_loop_numbers tells). Read-only; never raises (an unreadable table
    names nothing, as for referenced_loop_numbers)."""
    try:
        raw = files.read_small(mountinfo, MAX_TABLE)
    except OSError:
        return False
    return b"/loop%d " % number in raw


def held_open(path: str) -> bool | None:
    """Whether any open file description refers to the file ``path`` (a loop device's
    backing file, a process's descriptor): False when the kernel grants a write lease
    on it (F_SETLEASE F_WRLCK, given only while the lease taker's own descriptor is
    the file's only opener, read-only or writable), which is dropped again at once;
    True when it refuses (EAGAIN); None when it cannot tell (no such file, a
    filesystem without leases such as NFS, leases turned off, EPERM without
    CAP_LEASE). Holds nothing afterwards; never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        # Someone opening the file while the lease is held makes the kernel signal the
        # lease holder (SIGIO by default, which kills a process that does not handle
        # it) and wait until the lease is dropped: the signal is made SIGURG, which is
        # ignored by default, and the lease is dropped within microseconds anyway.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        return True if exc.errno in (_errno.EAGAIN, _errno.EBUSY) else None
    else:
        # Closing the descriptor drops the lease too; this only says so first.
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        except OSError:
            pass
        return False
    finally:
        os.close(fd)


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

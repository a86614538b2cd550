"""In-memory fakes of the csi_py.linux services, for fast unit tests of the core.

They keep the real methods, signatures and error types (tests/unit/test_fakes_api.py
checks the signatures; tests/integration/test_linux_contract.py runs the same
scenarios against the real kernel and these fakes). Files stay real: images are
created in a tmp dir and the fake loop manager reads their sizes; the fake
filesystem writes a small marker at the start of the backing file, so "what format
wrote, detect returns" survives detach/attach and file copies (clones, snapshots),
just like a real superblock.

Like kubernetes mount-utils' FakeMounter, every fake keeps an ``actions`` list of
the changes it made (successful calls only), and ``fail_next(op, exc)`` makes the
next call of ``op`` raise ``exc`` before doing anything.

What they do NOT model: the kernel's mount propagation, renames of a backing file
(real sysfs follows the rename, the fake does not), signatures other than
ext2/3/4, xfs, btrfs and the fake marker, writers blocking on a frozen filesystem
(the frozen state is only recorded in ``FakeKernel.frozen``), and filesystem errors
(``FakeFilesystems.inject_error`` sets what ``errors()`` reports). Image files
need no fake: tests use csi_py.linux.files on real temporary files.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from csi_py.linux import Host
from csi_py.linux.errors import (
    CommandError,
    DeviceBusy,
    FreezeError,
    GrowNotPermitted,
    LinuxError,
    LoopError,
    MountError,
)
from csi_py.linux.filesystems import PROBE_BYTES
from csi_py.linux.fs import (
    EXT_TYPES,
    SUPPORTED_FS,
    FsStats,
    hold_frozen,
    probe_superblock,
    validate_label,
)
from csi_py.linux.loop import READ_AHEAD_MAX_KIB, LoopDevice
from csi_py.linux.mount import (
    ATIME_FLAGS,
    FLAG_WORDS,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_STRICTATIME,
    MountEntry,
    MountTable,
    normalize,
    parse_options,
)

FAKE_DEV_PREFIX = "/dev/fakeloop"
_FAKE_DEV = re.compile(r"/dev/fakeloop(\d+)")
FAKE_MAGIC = b"CSIPY-FAKEFS\n"
# A real superblock may sit as far in as this (btrfs); format() clears up to here.
_WIPE_BYTES = PROBE_BYTES
_MOUNTABLE = {*EXT_TYPES, *SUPPORTED_FS}
_DEVTMPFS_MINOR = 6
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# What a fresh loop device reads ahead (the kernel's default of 128 KiB; the real
# value varies with the kernel and the backing device).
DEFAULT_READ_AHEAD_KIB = 128


@dataclass(frozen=True)
class FakeAction:
    """One change a fake made: ``op`` is the method name, ``target`` what it acted on
    (device, mount point), ``source`` where from, ``detail`` the rest."""

    op: str
    target: str
    source: str = ""
    detail: str = ""


@dataclass
class _Loop:
    number: int
    backing_file: str
    inode: tuple[int, int]
    size_bytes: int
    direct_io: bool
    read_only: bool
    logical_block_size: int
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KIB

    @property
    def path(self) -> str:
        return f"{FAKE_DEV_PREFIX}{self.number}"


@dataclass
class _Mount:
    mount_id: int
    parent_id: int
    source: str
    target: str
    fs_type: str
    flags: int
    data: tuple[str, ...]
    root: str
    major: int
    minor: int
    sb_ro: bool  # the filesystem (superblock) is read-only, not just this mount


@dataclass
class FakeKernel:
    """State shared by the fakes of one fake host: attached devices, the mount
    table and the things held open."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    loops: dict[int, _Loop] = field(default_factory=dict)
    mounts: list[_Mount] = field(default_factory=list)
    holders: Counter[str] = field(default_factory=Counter)
    next_mount_id: int = 1000
    # Devices whose filesystem is frozen; like a real superblock, it stays frozen
    # when unmounted (and then keeps the device busy) until mounted and thawed.
    frozen: set[str] = field(default_factory=set)
    # Device -> the error text FakeFilesystems.errors() reports (inject_error()).
    fs_errors: dict[str, str] = field(default_factory=dict)

    def loop_at(self, path: str) -> _Loop | None:
        m = _FAKE_DEV.fullmatch(path)
        return self.loops.get(int(m.group(1))) if m else None

    def top_mount(self, path: str) -> _Mount | None:
        found = [m for m in self.mounts if m.target == path]
        return found[-1] if found else None

    def covering_mount(self, path: str) -> _Mount | None:
        """The visible mount that ``path`` lives on (longest mount point prefix)."""
        best: _Mount | None = None
        for m in self.mounts:
            if path == m.target or path.startswith(m.target.rstrip("/") + "/"):
                if best is None or len(m.target) >= len(best.target):
                    best = m
        return best


class _FakeBase:
    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel
        self.actions: list[FakeAction] = []
        self._faults: dict[str, list[BaseException]] = {}

    def fail_next(self, op: str, exc: BaseException) -> None:
        """Make the next call of method ``op`` raise ``exc`` (queued, one per call)."""
        with self.kernel.lock:
            self._faults.setdefault(op, []).append(exc)

    def _check_fault(self, op: str) -> None:
        queue = self._faults.get(op)
        if queue:
            raise queue.pop(0)

    def _log(self, op: str, target: str, source: str = "", detail: str = "") -> None:
        self.actions.append(FakeAction(op, target, source, detail))


# ---- loop devices ----------------------------------------------------------------


class FakeLoopManager(_FakeBase):
    """Hands out /dev/fakeloopN for real backing files; no kernel involved."""

    def attach(
        self,
        backing_file: str,
        *,
        direct_io: bool = True,
        read_only: bool = False,
        block_size: int | None = None,
    ) -> LoopDevice:
        if block_size is not None and block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"loop block size must be 512, 1024, 2048 or 4096, not {block_size}")
        with self.kernel.lock:
            self._check_fault("attach")
            path = os.path.abspath(backing_file)
            try:
                st = os.stat(path)
            except OSError as exc:
                raise LoopError(
                    f"cannot open backing file {path}: {os.strerror(exc.errno or 0)}",
                    device=None,
                    errno=exc.errno,
                    backing_file=path,
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise LoopError(
                    f"cannot open backing file {path}: is a directory",
                    device=None,
                    errno=errno.EISDIR,
                    backing_file=path,
                )
            if not stat.S_ISREG(st.st_mode):
                raise LoopError(
                    f"backing file {path} is not a regular file",
                    device=None,
                    errno=errno.EINVAL,
                    backing_file=path,
                )
            number = 0
            while number in self.kernel.loops:
                number += 1
            loop = _Loop(
                number=number,
                backing_file=path,
                inode=(st.st_dev, st.st_ino),
                size_bytes=st.st_size // 512 * 512,
                direct_io=direct_io,
                read_only=read_only,
                logical_block_size=block_size or 512,
            )
            self.kernel.loops[number] = loop
            self._log("attach", loop.path, path, "ro" if read_only else "rw")
            return _describe(loop)

    def detach(self, device_path: str) -> None:
        with self.kernel.lock:
            self._check_fault("detach")
            if _FAKE_DEV.fullmatch(device_path) is None:
                raise LoopError(
                    f"{device_path} is not a loop device", device=device_path, errno=errno.ENOTBLK
                )
            loop = self.kernel.loop_at(device_path)
            if loop is None:
                return
            for m in self.kernel.mounts:
                if m.source == device_path:
                    raise DeviceBusy(
                        f"{device_path} is mounted at {m.target} ({m.fs_type}); unmount it first",
                        device=device_path,
                        path=m.target,
                    )
            if self.kernel.holders[device_path] or device_path in self.kernel.frozen:
                raise DeviceBusy(
                    f"{device_path} (backing file {loop.backing_file}) is still open by "
                    "another process (or by a frozen filesystem); not detached",
                    device=device_path,
                    path=loop.backing_file,
                )
            del self.kernel.loops[loop.number]
            self._log("detach", device_path, loop.backing_file)

    def list_attached(self) -> list[LoopDevice]:
        with self.kernel.lock:
            return [_describe(lp) for _, lp in sorted(self.kernel.loops.items())]

    def find_by_backing_file(self, backing_file: str) -> list[LoopDevice]:
        want = os.path.realpath(backing_file)
        return [d for d in self.list_attached() if os.path.realpath(d.backing_file) == want]

    def attached_to(self, backing_file: str) -> list[LoopDevice]:
        # The fake's devices hold no file open, so it cannot ask the kernel (a lease)
        # whether any does: its own table answers, as the real scan would.
        return self.find_by_backing_file(backing_file)

    def held_open(self, backing_file: str) -> bool | None:
        # Only the fake's own devices can hold a file here (no processes, no links).
        return bool(self.find_by_backing_file(backing_file))

    def get(self, device_path: str) -> LoopDevice | None:
        with self.kernel.lock:
            loop = self.kernel.loop_at(device_path)
            return None if loop is None else _describe(loop)

    def refresh_capacity(self, device_path: str) -> None:
        with self.kernel.lock:
            self._check_fault("refresh_capacity")
            loop = self._require(device_path)
            try:
                loop.size_bytes = os.stat(loop.backing_file).st_size // 512 * 512
            except FileNotFoundError:
                pass  # the kernel still has the (deleted) file open: size unchanged
            self._log("refresh_capacity", device_path, detail=str(loop.size_bytes))

    def set_direct_io(self, device_path: str, enabled: bool) -> None:
        with self.kernel.lock:
            self._check_fault("set_direct_io")
            self._require(device_path).direct_io = enabled
            self._log("set_direct_io", device_path, detail=str(enabled))

    def set_read_ahead(self, device_path: str, kib: int) -> None:
        if isinstance(kib, bool) or not isinstance(kib, int) or not 0 <= kib <= READ_AHEAD_MAX_KIB:
            raise ValueError(f"read-ahead must be 0 to {READ_AHEAD_MAX_KIB} KiB, not {kib!r}")
        with self.kernel.lock:
            self._check_fault("set_read_ahead")
            loop = self._require(device_path)
            loop.read_ahead_kb = kib // _PAGE_KIB * _PAGE_KIB  # kept in pages, as the kernel
            self._log("set_read_ahead", device_path, detail=str(kib))

    def get_read_ahead(self, device_path: str) -> int:
        with self.kernel.lock:
            return self._require(device_path).read_ahead_kb

    def flush(self, device_path: str) -> None:
        with self.kernel.lock:
            self._check_fault("flush")
            self._require(device_path)
            self._log("flush", device_path)

    # -- test helpers --

    def hold_open(self, device_path: str) -> None:
        """Pretend a process opened the device: detach raises DeviceBusy until
        :meth:`release`."""
        with self.kernel.lock:
            self.kernel.holders[device_path] += 1

    def release(self, device_path: str) -> None:
        with self.kernel.lock:
            self.kernel.holders[device_path] -= 1

    def _require(self, device_path: str) -> _Loop:
        loop = self.kernel.loop_at(device_path)
        if loop is None:
            raise LoopError(
                f"{device_path} is not an attached loop device",
                device=device_path,
                errno=errno.ENXIO,
            )
        return loop


def _describe(loop: _Loop) -> LoopDevice:
    try:
        st = os.stat(loop.backing_file)
        deleted = (st.st_dev, st.st_ino) != loop.inode
    except FileNotFoundError:
        deleted = True
    return LoopDevice(
        path=loop.path,
        number=loop.number,
        backing_file=loop.backing_file,
        backing_deleted=deleted,
        size_bytes=loop.size_bytes,
        direct_io=loop.direct_io,
        read_only=loop.read_only,
        logical_block_size=loop.logical_block_size,
        autoclear=False,
        backing_dev=loop.inode[0],
        backing_inode=loop.inode[1],
    )


# ---- mounts ----------------------------------------------------------------------


_WORD_FOR_FLAG = (
    (MS_NOSUID, "nosuid"),
    (MS_NODEV, "nodev"),
    (MS_NOEXEC, "noexec"),
    (MS_NOATIME, "noatime"),
    (MS_NODIRATIME, "nodiratime"),
    (MS_RELATIME, "relatime"),
)


def _option_words(flags: int) -> tuple[str, ...]:
    words = ["ro" if flags & MS_RDONLY else "rw"]
    words += [w for bit, w in _WORD_FOR_FLAG if flags & bit]
    return tuple(words)


class FakeMounter(_FakeBase):
    """A mount table in memory. Targets must exist on disk (they are real tmp
    paths); nothing is actually mounted, so files written "into" a fake mount land
    in the target directory itself."""

    def list_mounts(self) -> list[MountEntry]:
        with self.kernel.lock:
            return [
                MountEntry(
                    mount_id=m.mount_id,
                    parent_id=m.parent_id,
                    major=m.major,
                    minor=m.minor,
                    root=m.root,
                    mount_point=m.target,
                    mount_options=_option_words(m.flags),
                    fs_type=m.fs_type,
                    source=m.source,
                    super_options=("ro" if m.sb_ro else "rw", *m.data),
                )
                for m in self.kernel.mounts
            ]

    def table(self) -> MountTable:
        return MountTable.of_entries(self.list_mounts())

    def mounts_at(self, path: str) -> list[MountEntry]:
        norm = normalize(path)
        return [m for m in self.list_mounts() if m.mount_point == norm]

    def is_mounted(self, path: str) -> bool:
        return bool(self.mounts_at(path))

    def mount(
        self,
        source: str,
        target: str,
        fs_type: str,
        options: Sequence[str] = (),
        *,
        read_only: bool = False,
    ) -> None:
        flags, data = parse_options(options)
        if read_only:
            flags |= MS_RDONLY
        if not flags & ATIME_FLAGS:
            flags |= MS_RELATIME  # the kernel's default
        with self.kernel.lock:
            self._check_fault("mount")
            tgt = normalize(target)

            def fail(err: int, why: str) -> MountError:
                return MountError(
                    f"mount {source} on {target} (type {fs_type}) failed: "
                    f"{errno.errorcode[err]} ({os.strerror(err)}); {why}",
                    target=target,
                    errno=err,
                    source=source,
                )

            if not os.path.exists(tgt):
                raise fail(errno.ENOENT, "the source or the target does not exist")
            if not os.path.isdir(tgt):
                raise fail(errno.ENOTDIR, "a filesystem can only be mounted on a directory")
            if fs_type not in _MOUNTABLE:
                raise fail(errno.ENODEV, "the kernel does not support this filesystem type")
            loop = self.kernel.loop_at(source)
            if loop is None:
                if os.path.exists(source):
                    raise fail(errno.ENOTBLK, "the source is not a block device")
                raise fail(errno.ENOENT, "the source or the target does not exist")
            header = _read_marker(loop.backing_file)
            on_disk = header.get("type") if header else None
            if on_disk != fs_type:
                raise fail(errno.EINVAL, "wrong filesystem type, bad option, or bad superblock")
            if loop.read_only and not flags & MS_RDONLY:
                raise fail(errno.EACCES, "the device is read-only, try read_only=True")
            top = self.kernel.top_mount(tgt)
            if top is not None and top.source == source and top.major == 7 and top.root == "/":
                # The kernel refuses the same filesystem again on its own mount point.
                raise fail(errno.EBUSY, "the device is already in use")
            for m in self.kernel.mounts:
                # One superblock per device: it is read-only or not for all mounts.
                if m.source == source and m.major == 7 and m.sb_ro != bool(flags & MS_RDONLY):
                    raise fail(errno.EBUSY, "the device is already in use")
            words = tuple(w for w in data.split(",") if w)
            sb_ro = bool(flags & MS_RDONLY)
            self._add(source, tgt, fs_type, flags, words, "/", 7, loop.number, sb_ro)
            self._log("mount", tgt, source, f"{fs_type} {','.join(options)}".strip())

    def bind_mount(
        self,
        source: str,
        target: str,
        *,
        read_only: bool = False,
        extra_flags: Sequence[str] = (),
    ) -> None:
        sets = clears = 0
        for word in extra_flags:
            if word not in FLAG_WORDS:
                raise ValueError(f"bind mount option {word!r} is not a mount flag word")
            set_bits, clear_bits = FLAG_WORDS[word]
            sets = (sets & ~clear_bits) | set_bits
            clears = (clears & ~set_bits) | clear_bits
        if read_only:
            sets |= MS_RDONLY
            clears &= ~MS_RDONLY
        with self.kernel.lock:
            self._check_fault("bind_mount")
            src = normalize(source)
            tgt = normalize(target)

            def fail(err: int, why: str) -> MountError:
                return MountError(
                    f"bind mount {source} on {target} failed: "
                    f"{errno.errorcode[err]} ({os.strerror(err)}); {why}",
                    target=target,
                    errno=err,
                    source=source,
                )

            loop = self.kernel.loop_at(src)
            if loop is None and not os.path.exists(src):
                raise fail(errno.ENOENT, "the source or the target does not exist")
            if not os.path.exists(tgt):
                raise fail(errno.ENOENT, "the source or the target does not exist")
            src_is_dir = loop is None and os.path.isdir(src)
            if src_is_dir != os.path.isdir(tgt):
                raise fail(
                    errno.ENOTDIR,
                    "a directory can only be mounted on a directory, a file on a file",
                )
            sb_ro = False
            data: tuple[str, ...]
            if loop is not None:
                # A device node lives on devtmpfs, as in the real mount table.
                args = ("devtmpfs", "devtmpfs", f"/{os.path.basename(src)}", 0, _DEVTMPFS_MINOR)
                flags, data = MS_RELATIME, ()
            elif (under := self.kernel.covering_mount(src)) is not None:
                rel = os.path.relpath(src, under.target)
                root = normalize(os.path.join(under.root, rel)) if rel != "." else under.root
                args = (under.source, under.fs_type, root, under.major, under.minor)
                # A bind inherits the per-mount flags of where it came from.
                flags, data, sb_ro = under.flags, under.data, under.sb_ro
            else:
                args = ("fakehost", "fakehost", src, 0, 1)
                flags, data = MS_RELATIME, ()
            if sets or clears:
                if sets & ATIME_FLAGS:
                    flags &= ~ATIME_FLAGS
                flags = (flags & ~clears) | sets
            self._add(args[0], tgt, args[1], flags, data, args[2], args[3], args[4], sb_ro)
            detail = ",".join((["ro"] if read_only else []) + list(extra_flags))
            self._log("bind_mount", tgt, src, detail)

    def unmount(self, target: str) -> None:
        with self.kernel.lock:
            self._check_fault("unmount")
            tgt = normalize(target)
            top = self.kernel.top_mount(tgt)
            if top is None:
                return
            children = [m.target for m in self.kernel.mounts if m.parent_id == top.mount_id]
            if children or self.kernel.holders[tgt]:
                raise DeviceBusy(
                    f"cannot unmount {target}: target is busy (a process has files open or "
                    "its working directory there, or something is mounted beneath it)",
                    path=target,
                )
            self.kernel.mounts.remove(top)
            self._log("unmount", tgt, top.source)

    # -- test helpers --

    def hold_open(self, target: str) -> None:
        """Pretend a process has a file open under mount point ``target``: unmount
        raises DeviceBusy until :meth:`release`."""
        with self.kernel.lock:
            self.kernel.holders[normalize(target)] += 1

    def release(self, target: str) -> None:
        with self.kernel.lock:
            self.kernel.holders[normalize(target)] -= 1

    def _add(
        self,
        source: str,
        target: str,
        fs_type: str,
        flags: int,
        data: tuple[str, ...],
        root: str,
        major: int,
        minor: int,
        sb_ro: bool,
    ) -> None:
        parent = self.kernel.covering_mount(target)
        self.kernel.next_mount_id += 1
        self.kernel.mounts.append(
            _Mount(
                mount_id=self.kernel.next_mount_id,
                parent_id=parent.mount_id if parent else 1,
                source=source,
                target=target,
                fs_type=fs_type,
                flags=flags & ~MS_STRICTATIME,
                data=data,
                root=root,
                major=major,
                minor=minor,
                sb_ro=sb_ro,
            )
        )


# ---- filesystems -----------------------------------------------------------------


def _read_marker(path: str) -> dict[str, str] | None:
    """The fake superblock at the start of an image: {"type", "size", "label"}."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if not head.startswith(FAKE_MAGIC):
        return None
    line = head[len(FAKE_MAGIC) :].split(b"\n", 1)[0].decode()
    return dict(kv.split("=", 1) for kv in line.split(";") if "=" in kv)


def _write_marker(path: str, values: dict[str, str]) -> None:
    body = FAKE_MAGIC + ";".join(f"{k}={v}" for k, v in values.items()).encode() + b"\n"
    with open(path, "r+b") as f:
        f.write(body)


class FakeFilesystems(_FakeBase):
    """mkfs/grow/detect on fake devices, recorded in a marker in the backing file."""

    def __init__(self, kernel: FakeKernel):
        super().__init__(kernel)
        # Whether this "process" may resize a mounted ext4 (CAP_SYS_RESOURCE).
        self.online_resize = True

    def detect(self, device: str) -> str | None:
        with self.kernel.lock:
            self._check_fault("detect")
            path = self._backing(device)
            if path is None:
                raise LinuxError(f"cannot open {device} to detect its filesystem", device=device)
            marker = _read_marker(path)
            if marker is not None:
                return marker["type"]
            with open(path, "rb") as f:
                return probe_superblock(f.read(_WIPE_BYTES))

    def format(self, device: str, fs_type: str, *, label: str | None = None) -> None:
        if fs_type not in SUPPORTED_FS:
            raise ValueError(
                f"unsupported filesystem type {fs_type!r}; supported: {', '.join(SUPPORTED_FS)}"
            )
        if label is not None:
            validate_label(fs_type, label)
        with self.kernel.lock:
            self._check_fault("format")
            argv = [f"mkfs.{fs_type}", device]
            loop = self.kernel.loop_at(device)
            if loop is None:
                raise CommandError(argv, 1, f"{device}: No such file or directory")
            if loop.read_only:
                raise CommandError(argv, 1, f"cannot open {device}: Read-only file system")
            with open(loop.backing_file, "r+b") as f:
                f.write(b"\0" * min(_WIPE_BYTES, loop.size_bytes))
            _write_marker(
                loop.backing_file,
                {"type": fs_type, "size": str(loop.size_bytes), "label": label or ""},
            )
            self._log("format", device, detail=fs_type)

    def statfs(self, path: str) -> FsStats:
        """Synthetic numbers for a fake mount of a fake device (its filesystem size,
        the bytes of the real files written into the target); os.statvfs otherwise."""
        with self.kernel.lock:
            norm = normalize(path)
            mount = self.kernel.covering_mount(norm)
            loop = None
            if mount is not None and mount.major == 7:
                loop = self.kernel.loops.get(mount.minor)
            marker = _read_marker(loop.backing_file) if loop else None
        if mount is None or marker is None:
            st = os.statvfs(path)
            total = st.f_blocks * st.f_frsize
            return FsStats(
                total_bytes=total,
                available_bytes=st.f_bavail * st.f_frsize,
                used_bytes=total - st.f_bfree * st.f_frsize,
                total_inodes=st.f_files,
                free_inodes=st.f_ffree,
                used_inodes=st.f_files - st.f_ffree,
            )
        total = int(marker["size"])
        used = entries = 0
        for dirpath, dirnames, filenames in os.walk(mount.target):
            entries += len(dirnames) + len(filenames)
            for name in filenames:
                try:
                    used += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        used = min(used, total)
        inodes = max(total // 16384, entries + 1)
        return FsStats(
            total_bytes=total,
            available_bytes=total - used,
            used_bytes=used,
            total_inodes=inodes,
            free_inodes=inodes - entries - 1,
            used_inodes=entries + 1,
        )

    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None:
        ext = fs_type in EXT_TYPES
        if not ext and fs_type not in SUPPORTED_FS:
            raise ValueError(f"cannot grow filesystem type {fs_type!r}")
        if not ext and not mount_point:
            raise ValueError(f"growing {fs_type} on {device} needs it mounted: no mount point")
        with self.kernel.lock:
            self._check_fault("grow")
            tool = "resize2fs" if ext else ("xfs_growfs" if fs_type == "xfs" else "btrfs")
            argv = [tool, device if ext else str(mount_point)]
            loop = self.kernel.loop_at(device)
            marker = _read_marker(loop.backing_file) if loop else None
            if loop is None or marker is None or marker["type"] != fs_type:
                raise CommandError(argv, 1, f"{device}: no {fs_type} filesystem found")
            if not ext:
                top = self.kernel.top_mount(normalize(str(mount_point)))
                if top is None or top.source != device:
                    raise CommandError(argv, 1, f"{mount_point} is not a mounted {fs_type}")
            elif (
                not self.online_resize
                and loop.size_bytes > int(marker["size"])
                and any(m.source == device for m in self.kernel.mounts)
            ):
                raise GrowNotPermitted(
                    f"cannot grow the {fs_type} filesystem on {device} (mounted): online "
                    "ext4 resize needs CAP_SYS_RESOURCE, which this process lacks",
                    device=device,
                    mount_point=mount_point,
                    fs_type=fs_type,
                )
            marker["size"] = str(loop.size_bytes)
            _write_marker(loop.backing_file, marker)
            self._log("grow", device, detail=f"{fs_type} {loop.size_bytes}")

    def can_grow_online(self, fs_type: str) -> bool:
        if fs_type in EXT_TYPES:
            return self.online_resize
        return fs_type in SUPPORTED_FS

    def needs_grow(self, device: str, mount_point: str | None, fs_type: str) -> bool:
        ext = fs_type in EXT_TYPES
        if not ext and fs_type not in SUPPORTED_FS:
            raise ValueError(f"cannot grow filesystem type {fs_type!r}")
        if not ext and not mount_point:
            raise ValueError(f"to grow {fs_type} on {device} it must be mounted: no mount point")
        with self.kernel.lock:
            loop, marker = self._filesystem(device, mount_point, fs_type, ext)
            return loop.size_bytes > int(marker["size"])

    def freeze(self, mount_point: str) -> None:
        with self.kernel.lock:
            self._check_fault("freeze")
            device = self._freezable(mount_point, "freeze")
            if device not in self.kernel.frozen:
                self.kernel.frozen.add(device)
                self._log("freeze", normalize(mount_point), device)

    def thaw(self, mount_point: str) -> None:
        with self.kernel.lock:
            self._check_fault("thaw")
            device = self._freezable(mount_point, "thaw")
            if device in self.kernel.frozen:
                self.kernel.frozen.discard(device)
                self._log("thaw", normalize(mount_point), device)

    def frozen(self, mount_points: Sequence[str]) -> AbstractContextManager[None]:
        return hold_frozen(self, mount_points)

    def errors(self, device: str, mount_point: str | None, fs_type: str) -> str | None:
        ext = fs_type in EXT_TYPES
        if not ext and fs_type not in SUPPORTED_FS:
            raise ValueError(f"cannot check filesystem type {fs_type!r}")
        if not ext and not mount_point:
            raise ValueError(f"to check {fs_type} on {device} it must be mounted: no mount point")
        with self.kernel.lock:
            self._check_fault("errors")
            self._filesystem(device, mount_point, fs_type, ext)
            found = self.kernel.fs_errors.get(device)
        if found is None:
            return None
        where = f" mounted at {mount_point}" if mount_point else ""
        return f"{fs_type} on {device}{where}: {found}"

    # -- test helpers --

    def inject_error(self, device: str, message: str | None) -> None:
        """Make :meth:`errors` report ``message`` for ``device`` (None: healthy)."""
        with self.kernel.lock:
            if message is None:
                self.kernel.fs_errors.pop(device, None)
            else:
                self.kernel.fs_errors[device] = message

    def _filesystem(
        self, device: str, mount_point: str | None, fs_type: str, ext: bool
    ) -> tuple[_Loop, dict[str, str]]:
        """The device and its marker, checked the way the real reads would fail."""
        loop = self.kernel.loop_at(device)
        if loop is None:
            raise LinuxError(f"cannot open {device}: no such device", device=device)
        marker = _read_marker(loop.backing_file)
        if marker is None or marker["type"] != fs_type:
            raise LinuxError(f"{device} holds no {fs_type} filesystem", device=device)
        if not ext:
            top = self.kernel.top_mount(normalize(str(mount_point)))
            if top is None or top.source != device:
                raise LinuxError(
                    f"{mount_point} is not a mounted {fs_type} filesystem of {device}",
                    path=mount_point,
                )
        return loop, marker

    def _freezable(self, mount_point: str, op: str) -> str:
        """The device whose filesystem is mounted at ``mount_point``; the errors of
        the real freeze()/thaw() otherwise."""
        tgt = normalize(mount_point)

        def fail(err: int, why: str) -> FreezeError:
            return FreezeError(
                f"cannot {op} {mount_point}: {errno.errorcode[err]} ({os.strerror(err)}){why}",
                path=mount_point,
                errno=err,
            )

        if os.path.islink(tgt):
            raise fail(errno.ENOTDIR, "")  # as O_DIRECTORY|O_NOFOLLOW answers
        if not os.path.exists(tgt):
            raise fail(errno.ENOENT, "")
        if not os.path.isdir(tgt):
            raise fail(errno.ENOTDIR, "")
        top = self.kernel.top_mount(tgt)
        if top is None:
            raise fail(errno.EINVAL, "; it is not a mount point")
        if top.major != 7 or top.fs_type not in _MOUNTABLE:
            raise fail(errno.EOPNOTSUPP, "; this filesystem type cannot be frozen")
        return top.source

    def block_device_size(self, device: str) -> int:
        with self.kernel.lock:
            loop = self.kernel.loop_at(device)
            if loop is None:
                raise LinuxError(f"cannot open {device}: no such device", device=device)
            return loop.size_bytes

    def _backing(self, device: str) -> str | None:
        loop = self.kernel.loop_at(device)
        if loop is not None:
            return loop.backing_file
        # Real detect works on a plain image file too.
        return device if os.path.isfile(device) else None


@dataclass(frozen=True)
class FakeHost(Host):
    """A Host of fakes, with their shared kernel state for test helpers."""

    kernel: FakeKernel = field(default_factory=FakeKernel)


def fake_host() -> FakeHost:
    """A fresh Host of FakeLoopManager, FakeMounter and FakeFilesystems sharing one
    FakeKernel (so detaching a mounted fake device is refused, as for real)."""
    kernel = FakeKernel()
    return FakeHost(
        loops=FakeLoopManager(kernel),
        mounts=FakeMounter(kernel),
        fs=FakeFilesystems(kernel),
        kernel=kernel,
    )


__all__ = [
    "FakeAction",
    "FakeFilesystems",
    "FakeHost",
    "FakeKernel",
    "FakeLoopManager",
    "FakeMounter",
    "fake_host",
]

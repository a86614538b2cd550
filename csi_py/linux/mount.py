"""Mounts: mount(2)/umount2(2) through ctypes, option words, and reading the mount table
(its parsing is mountinfo.py's).

No fork/exec here: NodePublish/NodeUnpublish are the hot path, and a failed syscall
gives an errno we can map precisely. The mount table is always read from the kernel
(the kernel, not memory, is the truth for mounts); nothing is cached.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterable, Sequence

from csi_py.linux import _libc, files
from csi_py.linux.errors import DeviceBusy, MountError, errno_text
from csi_py.linux.mountinfo import (
    MAX_TABLE,
    MOUNTINFO,
    MountEntry,
    MountTable,
    normalize,
    parse_mountinfo,
)

# <linux/mount.h> / <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
UMOUNT_NOFOLLOW = 8
MNT_DETACH = 2


ATIME_FLAGS = MS_NOATIME | MS_RELATIME | MS_STRICTATIME

# word -> (flags to set, flags to clear), as mount(8) reads them.
FLAG_WORDS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "mand": (MS_MANDLOCK, 0),
    "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, ATIME_FLAGS),
    "atime": (0, MS_NOATIME),
    "relatime": (MS_RELATIME, ATIME_FLAGS),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, ATIME_FLAGS),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
}

# Words only mount(8) and fstab understand; the kernel would reject them as
# filesystem data, so they are dropped, as mount(8) does.
USERSPACE_WORDS = frozenset({"defaults", "auto", "noauto", "nouser", "nofail", "_netdev"})

# Words that change what kind of mount call this is; they have their own methods
# (bind_mount) or are deliberately unsupported, so passing them is a caller bug.
REJECTED_WORDS = frozenset(
    {
        "bind", "rbind", "remount", "move", "user", "users", "owner", "group",
        "shared", "rshared", "private", "rprivate", "slave", "rslave",
        "unbindable", "runbindable",
    }
)  # fmt: skip


def parse_options(options: Iterable[str]) -> tuple[int, str]:
    """Split mount option words into (MS_* flags, data string for the filesystem).

    Flag words (ro, nosuid, noatime, ...) become flags, applied in order so a later
    word wins; userspace-only words (defaults, nofail, ...) are dropped; everything
    else is passed to the filesystem, comma-joined, in order. Raises ValueError for
    an empty word, a word with a comma or NUL, or a word that needs another kind of
    mount call (bind, remount, propagation words). Pure function.
    """
    flags = 0
    data: list[str] = []
    for word in options:
        if not word or "," in word or "\0" in word:
            raise ValueError(f"invalid mount option {word!r}: empty or contains ',' or NUL")
        if word in REJECTED_WORDS:
            raise ValueError(f"mount option {word!r} is not supported here (use bind_mount)")
        if word in USERSPACE_WORDS:
            continue
        if word in FLAG_WORDS:
            set_bits, clear_bits = FLAG_WORDS[word]
            flags = (flags & ~clear_bits) | set_bits
        else:
            data.append(word)
    return flags, ",".join(data)


# statvfs f_flag bits (ST_*) -> the MS_* flag that keeps them on a bind remount.
_ST_TO_MS = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
    (8192, MS_NOSYMFOLLOW),  # ST_NOSYMFOLLOW, not exported by the os module
)


class Mounter:
    """Mounts and unmounts with the syscalls; reads the mount table from the kernel."""

    def __init__(self, mountinfo_path: str = MOUNTINFO):
        self._mountinfo_path = mountinfo_path

    def table(self) -> MountTable:
        """The mount table of this process's mount namespace as it is now: one read,
        parsed lazily (see MountTable). Never cached. Raises OSError if mountinfo
        cannot be read."""
        return MountTable(os.fsdecode(files.read_small(self._mountinfo_path, MAX_TABLE)))

    def list_mounts(self) -> list[MountEntry]:
        """All mounts of this process's mount namespace, in mountinfo order.
        Read-only, never cached. Raises OSError if mountinfo cannot be read."""
        return self.table().all()

    def mounts_at(self, path: str) -> list[MountEntry]:
        """Entries whose mount point is exactly ``path`` after :func:`normalize`
        (symlinks in ``path`` are NOT resolved), bottom first: the last one is the
        visible (top) mount."""
        # Only the lines whose mount point field matches are parsed: a node can have
        # hundreds of mounts.
        return self.table().at(path)

    def is_mounted(self, path: str) -> bool:
        """True if something is mounted exactly at ``path`` (see :meth:`mounts_at`)."""
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
        """Mount the filesystem on ``source`` (a device) at ``target``.

        ``options`` are translated by :func:`parse_options`; ``read_only=True``
        forces MS_RDONLY whatever the words say. NOT idempotent (check
        :meth:`mounts_at` first): the same device again on the same target fails
        with EBUSY, a different source stacks on top. A device that is already
        mounted elsewhere can be mounted again only with the same read-only
        setting (one superblock), else EBUSY. Raises ValueError for bad option words
        and MountError (with the errno) when the kernel refuses.
        """
        flags, data = parse_options(options)
        if read_only:
            flags |= MS_RDONLY
        err = _libc.mount(source, target, fs_type, flags, data or None)
        if err:
            what = f"mount {source} on {target} (type {fs_type}"
            what += f", options {','.join(options)})" if options else ")"
            raise MountError(
                f"{what} failed: {errno_text(err)}{_mount_hint(err)}",
                target=target,
                errno=err,
                source=source,
            )

    def bind_mount(
        self,
        source: str,
        target: str,
        *,
        read_only: bool = False,
        extra_flags: Sequence[str] = (),
    ) -> None:
        """Bind ``source`` (a directory, or a file/device node onto a file) to
        ``target``; non-recursive.

        The kernel ignores per-mount flags on a plain MS_BIND, so when ``read_only``
        or ``extra_flags`` (flag words only: nosuid, nodev, noexec, ...) are given a
        second MS_REMOUNT|MS_BIND call applies them. That remount replaces all
        per-mount flags, so the flags the new mount inherited (e.g. "ro" of a
        read-only source) are read back with statvfs and kept. If the remount fails
        the bind is undone before raising. NOT idempotent (binds stack). Raises
        ValueError for a non-flag word, MountError from the kernel.
        """
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

        err = _libc.mount(source, target, None, MS_BIND, None)
        if err:
            raise MountError(
                f"bind mount {source} on {target} failed: {errno_text(err)}{_mount_hint(err)}",
                target=target,
                errno=err,
                source=source,
            )
        if not (sets or clears):
            return
        try:
            current = os.statvfs(target).f_flag
            keep = 0
            for st_bit, ms_bit in _ST_TO_MS:
                if current & st_bit:
                    keep |= ms_bit
            if sets & ATIME_FLAGS:
                keep &= ~ATIME_FLAGS
            flags = MS_REMOUNT | MS_BIND | ((keep & ~clears) | sets)
            err = _libc.mount(None, target, None, flags, None)
        except OSError as exc:
            err = exc.errno or _errno.EIO
        if err:
            undo = _libc.umount2(target, UMOUNT_NOFOLLOW)
            undo_note = "" if not undo else f"; undoing the bind also failed: {errno_text(undo)}"
            raise MountError(
                f"bind mount {source} on {target}: applying "
                f"{'ro' if read_only else ''}{','.join(extra_flags)} failed: "
                f"{errno_text(err)}{undo_note}",
                target=target,
                errno=err,
                source=source,
            )

    def unmount(self, target: str) -> None:
        """Unmount the top mount at ``target`` (umount2 with UMOUNT_NOFOLLOW, so a
        symlink at ``target`` is never followed). Idempotent: nothing mounted there
        (EINVAL) or no such path (ENOENT) is success. Stacked mounts need one call
        each. Raises DeviceBusy on EBUSY (open files, cwd, or mounts beneath it),
        MountError for anything else."""
        err = _libc.umount2(target, UMOUNT_NOFOLLOW)
        if err in (0, _errno.EINVAL, _errno.ENOENT):
            return
        if err == _errno.EBUSY:
            raise DeviceBusy(
                f"cannot unmount {target}: target is busy (a process has files open or "
                "its working directory there, or something is mounted beneath it)",
                path=target,
            )
        raise MountError(f"unmount {target} failed: {errno_text(err)}", target=target, errno=err)


def _mount_hint(err: int) -> str:
    hints = {
        _errno.EINVAL: "; wrong filesystem type, bad option, or bad superblock",
        _errno.ENOENT: "; the source or the target does not exist",
        _errno.ENOTDIR: "; a directory can only be mounted on a directory, a file on a file",
        _errno.ENOTBLK: "; the source is not a block device",
        _errno.ENODEV: "; the kernel does not support this filesystem type",
        _errno.EBUSY: "; already mounted there, or mounted elsewhere with a different "
        "read-only setting",
        _errno.EPERM: "; mounting needs CAP_SYS_ADMIN",
        _errno.EACCES: "; the device is read-only, try read_only=True",
        _errno.EROFS: "; the device is read-only, try read_only=True",
    }
    return hints.get(err, "")


__all__ = [
    "MAX_TABLE",
    "MOUNTINFO",
    "MountEntry",
    "MountTable",
    "Mounter",
    "normalize",
    "parse_mountinfo",
    "parse_options",
]

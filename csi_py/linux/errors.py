"""Typed errors raised by the ``csi_py.linux`` layer.

Everything the kernel or an external tool refuses ends up as one of these, so the
core maps errors by type (never by parsing messages). Each message names the
object involved (device, path, target, tool) and the cause, so it can be shown to
a user as-is.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

# Every errno the syscalls of this layer are documented to fail with (mount(2),
# umount2(2), the loop ioctls, open/mkdir/rmdir/unlink/rename, fallocate,
# copy_file_range, FICLONE, FIFREEZE, fsync, statvfs), plus those it raises itself.
# core/errmap.py maps each to a CSI status; a test keeps the two in step.
KERNEL_ERRNOS: frozenset[int] = frozenset({
    _errno.EACCES, _errno.EAGAIN, _errno.EBADF, _errno.EBADMSG, _errno.EBUSY, _errno.EDQUOT,
    _errno.EEXIST, _errno.EFAULT, _errno.EFBIG, _errno.EINTR, _errno.EINVAL,
    _errno.EIO, _errno.EISDIR, _errno.ELOOP, _errno.EMFILE, _errno.EMLINK,
    _errno.ENAMETOOLONG, _errno.ENFILE, _errno.ENODEV, _errno.ENOENT, _errno.ENOMEM,
    _errno.ENOSPC, _errno.ENOSYS, _errno.ENOTBLK, _errno.ENOTDIR, _errno.ENOTEMPTY,
    _errno.ENOTTY, _errno.ENXIO, _errno.EOPNOTSUPP, _errno.EOVERFLOW, _errno.EPERM,
    _errno.EROFS, _errno.ESPIPE, _errno.ESTALE, _errno.ETIMEDOUT, _errno.ETXTBSY,
    _errno.EUCLEAN, _errno.EXDEV,
})


def errno_text(err: int | None) -> str:
    """``"EBUSY (Device or resource busy)"`` for an errno, ``"unknown error"`` for None."""
    if not err:
        return "unknown error"
    name = _errno.errorcode.get(err, f"errno {err}")
    return f"{name} ({os.strerror(err)})"


class LinuxError(Exception):
    """Base class of every error of the Linux layer.

    ``path`` and ``device`` carry the object the failure was about (either may be
    None); the message already names them.
    """

    def __init__(self, message: str, *, path: str | None = None, device: str | None = None):
        super().__init__(message)
        self.path = path
        self.device = device


class CommandError(LinuxError):
    """An external tool exited non-zero or timed out.

    ``returncode`` is None when the tool was killed because of the timeout;
    ``hint`` is an optional "what to do about it" appended to the message.
    """

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: bytes | str,
        *,
        timed_out: bool = False,
        stdout: bytes | str = b"",
        hint: str = "",
    ):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        self.stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
        self.timed_out = timed_out
        tool = os.path.basename(self.argv[0]) if self.argv else "?"
        tail = _tail(self.stderr) or _tail(self.stdout) or "no output"
        if timed_out:
            what = "timed out"
        else:
            what = f"exited with code {returncode}"
        # The last argument is almost always the device or mount point worked on.
        subject = self.argv[-1] if len(self.argv) > 1 else None
        self.hint = hint
        message = f"{tool} {what}: {tail} (command: {' '.join(self.argv)})"
        if hint:
            message += f"; {hint}"
        super().__init__(message, path=subject)


class ToolMissing(LinuxError):
    """A required external tool is not installed (not on PATH, /sbin or /usr/sbin)."""

    def __init__(self, tool: str):
        self.tool = tool
        super().__init__(
            f"required tool {tool!r} was not found on PATH, /sbin or /usr/sbin; "
            "install the package that provides it"
        )


class MountError(LinuxError):
    """mount(2) or umount2(2) failed for a reason other than "busy"."""

    def __init__(self, message: str, *, target: str, errno: int | None, source: str | None = None):
        self.target = target
        self.errno = errno
        self.source = source
        super().__init__(message, path=target, device=source)


class LoopError(LinuxError):
    """A loop device ioctl (or opening its backing file) failed."""

    def __init__(
        self,
        message: str,
        *,
        device: str | None,
        errno: int | None,
        backing_file: str | None = None,
    ):
        self.errno = errno
        self.backing_file = backing_file
        super().__init__(message, path=backing_file, device=device)


class DeviceBusy(LinuxError):
    """The object is still in use: a busy mount (umount EBUSY), or a loop device
    that is mounted or held open by someone else. Retrying later may succeed."""

    errno = _errno.EBUSY


class GrowNotPermitted(LinuxError):
    """Growing a mounted filesystem needs a capability this process lacks: ext4's
    online resize (EXT4_IOC_RESIZE_FS) demands CAP_SYS_RESOURCE. Retrying will not
    help; growing it while unmounted, or running the node plugin with the
    capability (privileged), will."""

    def __init__(
        self,
        message: str,
        *,
        device: str,
        mount_point: str | None,
        fs_type: str,
        capability: str = "CAP_SYS_RESOURCE",
    ):
        self.mount_point = mount_point
        self.fs_type = fs_type
        self.capability = capability
        super().__init__(message, path=mount_point, device=device)


class FreezeError(LinuxError):
    """FIFREEZE/FITHAW refused, or the path is not a mount point that may be frozen.
    ``errno`` is the kernel's (EINVAL for "not a mount point", EOPNOTSUPP for a
    filesystem that cannot freeze, EPERM without CAP_SYS_ADMIN)."""

    def __init__(self, message: str, *, path: str, errno: int | None):
        self.errno = errno
        super().__init__(message, path=path)


def _tail(text: str, limit: int = 400) -> str:
    """The last non-empty lines of a tool's output, at most ``limit`` characters."""
    text = text.strip()
    if len(text) <= limit:
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return "..." + " | ".join(line.strip() for line in text[-limit:].splitlines() if line.strip())

"""Kernel, pool and catalog failures as domain errors, so that no known condition
reaches a caller as INTERNAL or as a traceback.

ERRNO_ERRORS (made from _MEANINGS) is the one table from errno to the CSI status
(through the domain error classes that rpc/errors.py maps to codes);
tests/unit/test_errmap.py checks that it covers every errno the linux layer can raise.
"""

from __future__ import annotations

import errno as E
import os

from csi_py.core.pool import PoolError
from csi_py.domain import errors as e
from csi_py.linux.errors import (
    CommandError,
    DeviceBusy,
    GrowNotPermitted,
    LinuxError,
    ToolMissing,
    errno_text,
)
from csi_py.state.errors import CatalogError, CatalogFull

# What each errno the linux layer can raise means, under the domain error (and so the
# CSI status) it becomes.
_MEANINGS: dict[type[e.DriverError], dict[int, str]] = {
    # The request names something unusable: fix the request.
    e.InvalidArgument: {
        E.ENAMETOOLONG: "a path or one of its components is too long",
        E.EINVAL: "the kernel refused the arguments (a mount option the filesystem does"
                  " not take, a bad path or size)",
        E.ELOOP: "too many symbolic links in the path",
        E.ENOTDIR: "a component of the path is not a directory",
        E.EISDIR: "the path is a directory where a file is needed",
        E.EFAULT: "a bad address was passed to the kernel",
        E.ESPIPE: "the path is a pipe or socket, not a file",
    },
    # The node is not in a state that allows it: fix the node, then retry.
    e.FailedPrecondition: {
        E.ENOENT: "the path does not exist",
        E.EACCES: "permission denied",
        E.EPERM: "not permitted (csi-py needs to run privileged)",
        E.EROFS: "the filesystem is read-only",
        E.EBUSY: "it is in use (mounted, or open by a process)",
        E.ETXTBSY: "the file is in use",
        E.ENXIO: "the device is gone (detached)",
        E.ENODEV: "no such device, or the kernel lacks the filesystem",
        E.ENOTBLK: "not a block device",
        E.ENOTTY: "the kernel does not support this operation here",
        E.ENOSYS: "the kernel does not support this operation",
        E.EOPNOTSUPP: "the filesystem does not support this operation",
        E.EXDEV: "the paths are on different filesystems",
        E.EUCLEAN: "the filesystem is corrupted; unmount it and run its fsck",
        E.EBADMSG: "the filesystem is corrupted (a bad checksum); unmount it and run its fsck",
        E.EBADF: "the file was closed under the operation",
        E.EMLINK: "too many links",
    },
    # Names that are taken.
    e.AlreadyExists: {
        E.EEXIST: "the path already exists",
        E.ENOTEMPTY: "the directory is not empty",
    },
    # Out of something.
    e.ResourceExhausted: {
        E.ENOSPC: "no space left in the pool",
        E.EDQUOT: "the pool's quota is exhausted",
        E.EMFILE: "the driver has too many open files",
        E.ENFILE: "the node has too many open files",
        E.ENOMEM: "the kernel is out of memory",
    },
    e.OutOfRange: {
        E.EFBIG: "the file would grow past the filesystem's limit",
        E.EOVERFLOW: "a size or offset is out of range",
    },
    # Passing conditions: retrying later may work.
    e.Unavailable: {
        E.EAGAIN: "the kernel asked to try again",
        E.EINTR: "the call was interrupted",
        E.ETIMEDOUT: "timed out",
        E.ESTALE: "a stale file handle",
        # The storage under the pool or a volume fails: nothing the request can fix,
        # retried once the pool is repaired (health and docs/reliability.md say how).
        E.EIO: "I/O error: the pool's filesystem or disk is failing",
    },
}
ERRNO_ERRORS: dict[int, tuple[type[e.DriverError], str]] = {
    err: (kind, meaning) for kind, meanings in _MEANINGS.items()
    for err, meaning in meanings.items()
}


def pool_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError that means the pool is out of room: ENOSPC, or a
    quota's EDQUOT. The caller raises ResourceExhausted naming what did not fit. Pure."""
    return isinstance(exc, OSError) and exc.errno in (E.ENOSPC, E.EDQUOT)


def from_errno(err: int | None, subject: str) -> e.DriverError:
    """The domain error for a failed syscall about `subject` (a path, a device), with
    a message naming the subject, the errno and what it means."""
    kind, meaning = ERRNO_ERRORS.get(err or 0, (e.Internal, "an unexpected kernel error"))
    # No structured subject: `subject` is a path, and rpc adds the request's volume.
    return kind(f"{subject}: {errno_text(err)}", cause=meaning)


def translate(exc: BaseException) -> e.DriverError | None:
    """The domain error for a kernel, pool or catalog failure, or None when `exc` is
    none of those (a bug: the caller reports it as INTERNAL, with its trace)."""
    if isinstance(exc, e.DriverError):
        return exc
    if isinstance(exc, (DeviceBusy, ToolMissing, GrowNotPermitted)):
        return e.FailedPrecondition(str(exc))
    if isinstance(exc, CommandError):
        if exc.timed_out:
            return e.Unavailable(str(exc))
        return e.Internal(str(exc))
    if isinstance(exc, LinuxError):
        err = getattr(exc, "errno", None)
        if err in ERRNO_ERRORS:
            kind, _ = ERRNO_ERRORS[err]
            return kind(str(exc))
        return e.Internal(str(exc))
    if isinstance(exc, CatalogFull):
        return e.ResourceExhausted(str(exc))
    if isinstance(exc, CatalogError):
        return e.Unavailable(f"{exc}; the catalog is unusable (see `csi-py pool check`)")
    if isinstance(exc, PoolError):
        return e.FailedPrecondition(str(exc))
    if isinstance(exc, OSError):
        subject = os.fsdecode(exc.filename) if exc.filename else "a pool or node path"
        if exc.filename2:
            subject += f" -> {os.fsdecode(exc.filename2)}"
        return from_errno(exc.errno, subject)
    if isinstance(exc, ValueError):
        return e.InvalidArgument(str(exc))
    return None

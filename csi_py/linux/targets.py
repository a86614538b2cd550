"""Staging and target paths: creating the directory or file a mount goes on, and removing
it again once nothing is mounted there (what mount-utils calls CleanupMountPoint).

The CO gives the paths and creates their parents; these functions never follow a
symlink at the path itself (the caller has refused symlinked parents) and never remove
anything that is not an empty directory or an empty regular file.
"""

from __future__ import annotations

import errno
import os
import stat

from csi_py.domain.errors import AlreadyExists, FailedPrecondition, Subject


def make_staging_dir(path: str, mode: int = 0o750) -> None:
    """Create `path` and its missing parents as directories. Idempotent. Raises OSError."""
    os.makedirs(path, mode=mode, exist_ok=True)


def make_dir(path: str) -> None:
    """Create the target directory of a filesystem publish. Idempotent (an existing
    directory is fine). Raises AlreadyExists when something else is there,
    FailedPrecondition when it cannot be created (its parent missing or read-only)."""
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise AlreadyExists("exists and is not a directory", subject=_target(path)) from None
    except OSError as exc:
        raise _cannot_make(path, exc) from None


def make_file(path: str) -> None:
    """Create the target file of a block publish (the device node is bound onto it).
    Idempotent: an existing regular file is fine, and so is an empty directory, which
    some COs create even for block volumes (it is replaced by a file). Raises
    AlreadyExists (a non-empty directory, or neither file nor directory),
    FailedPrecondition when it cannot be created."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o640)
        os.close(fd)
    except FileExistsError:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            try:
                os.rmdir(path)
            except OSError as exc:
                raise AlreadyExists("is a non-empty directory; a block volume needs a file",
                                    subject=_target(path)) from exc
            make_file(path)
        elif not stat.S_ISREG(mode):
            raise AlreadyExists("exists and is not a regular file", subject=_target(path)) from None
    except OSError as exc:
        raise _cannot_make(path, exc) from None


def remove_target(path: str) -> None:
    """Remove a target directory or empty file we created, never following a symlink;
    anything else (a non-empty directory, a file with data) is left. Idempotent.
    Raises FailedPrecondition when it is still a mount point (in another mount
    namespace, or mounted again) or its parent is not writable."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(
                "is still a mount point (mounted again there, or in another mount"
                " namespace); unmount it and retry", subject=_target(path)) from None
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            # E.g. EROFS or EACCES: its parent is not writable, which the CO must ensure.
            raise FailedPrecondition("cannot be removed", cause=str(exc.strerror or exc),
                                     subject=_target(path)) from None


def remove_dir(path: str) -> None:
    """Remove the empty directory `path`. Idempotent (a missing one is fine). Raises
    OSError when it is not empty, busy or not a directory."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def is_symlink(path: str) -> bool:
    """Whether the last component of ``path`` is a symlink (not followed). False when
    nothing is there yet. Raises OSError when it cannot be looked at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.EIO:
            # A mount point of a filesystem that failed (a shut-down xfs answers every
            # stat of its root with EIO): a mount point is never a symlink, and it must
            # still be unmountable.
            return False
        raise
    return stat.S_ISLNK(st.st_mode)


def is_block_device(path: str) -> bool:
    """Whether `path` (followed) is a block device node, e.g. a published block
    volume's target. Raises OSError when it cannot be read."""
    return stat.S_ISBLK(os.stat(path).st_mode)


def _cannot_make(path: str, exc: OSError) -> FailedPrecondition:
    """The CO must give a target whose parent exists and is writable by the driver."""
    return FailedPrecondition(
        "cannot be created; its parent directory must exist and be writable (the CO"
        " creates it before NodePublishVolume)", cause=str(exc.strerror or exc),
        subject=_target(path))


def _target(path: str) -> Subject:
    return Subject("target", path=path)

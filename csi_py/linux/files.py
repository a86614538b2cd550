"""Volume image files in the pool: crash-safe create, grow, remove.

An image is created under a temporary name and renamed into place only when it is
complete and on disk, so after a crash a volume file either exists at its full size
or not at all (DESIGN.md principle 3); leftovers carry :data:`TEMP_MARKER` in their
name and :func:`remove_stale_temp_files` clears them.
"""

from __future__ import annotations

import errno as _errno
import os
import secrets

from csi_py.linux import _libc

TEMP_MARKER = ".tmp-"


def fsync_dir(path: str) -> None:
    """fsync the directory ``path`` so entries created, renamed or removed in it are
    durable. Idempotent. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TEMP_MARKER}{secrets.token_hex(6)}")


def _allocate(fd: int, size_bytes: int, path: str) -> None:
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as exc:
        if exc.errno == _errno.ENOSPC:
            raise OSError(
                _errno.ENOSPC,
                f"not enough space to preallocate {size_bytes} bytes for {path}",
                path,
            ) from None
        raise


def create_image(path: str, size_bytes: int, *, preallocate: bool) -> None:
    """Create the image file ``path`` of ``size_bytes``: sparse (thin) or fully
    allocated with fallocate (thick), mode 0600.

    Written under a temporary name in the same directory, fsynced, then renamed into
    place without replacing (RENAME_NOREPLACE) and the directory fsynced. NOT
    idempotent: raises FileExistsError if ``path`` exists. Raises OSError(ENOSPC)
    when a thick image does not fit (nothing is left behind), ValueError for a
    negative size, other OSErrors from the filesystem.
    """
    if size_bytes < 0:
        raise ValueError(f"image size must be >= 0, got {size_bytes}")
    if os.path.lexists(path):
        raise FileExistsError(_errno.EEXIST, "image file already exists", path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if preallocate and size_bytes > 0:
                _allocate(fd, size_bytes, path)
            else:
                os.ftruncate(fd, size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_noreplace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def _rename_noreplace(src: str, dst: str) -> None:
    err = _libc.renameat2_noreplace(src, dst)
    if err == 0:
        return
    if err == _errno.EEXIST:
        raise FileExistsError(_errno.EEXIST, "image file already exists", dst)
    if err not in (_errno.ENOSYS, _errno.EINVAL):
        raise OSError(err, os.strerror(err), dst)
    # No RENAME_NOREPLACE here (old libc or filesystem): link() also refuses to
    # replace; then drop the temporary name.
    os.link(src, dst)
    os.unlink(src)


def grow_image(path: str, size_bytes: int, *, preallocate: bool) -> None:
    """Grow ``path`` to ``size_bytes`` (thin: ftruncate; thick: fallocate the whole
    range, which also fills any holes) and fsync it.

    Idempotent: the same size again is a no-op (a thick file is still checked to be
    fully allocated). Never shrinks: raises ValueError if ``size_bytes`` is smaller
    than the file. On ENOSPC the file is put back to its old size and
    OSError(ENOSPC) is raised. Raises FileNotFoundError if it does not exist.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        old = os.fstat(fd).st_size
        if size_bytes < old:
            raise ValueError(f"refusing to shrink {path} from {old} to {size_bytes} bytes")
        if preallocate:
            try:
                _allocate(fd, size_bytes, path)
            except OSError:
                # fallocate may have extended the file before running out of space.
                os.ftruncate(fd, old)
                raise
        elif size_bytes > old:
            os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: str) -> None:
    """Remove ``path`` and fsync its directory. Idempotent: a missing file is fine.
    Raises OSError (e.g. IsADirectoryError)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path) or ".")


def remove_stale_temp_files(directory: str) -> list[str]:
    """Remove temporary files a crashed :func:`create_image` left in ``directory``
    and return their paths. Only call it when no create_image is running there.
    Idempotent."""
    removed = []
    for entry in os.scandir(directory):
        if entry.name.startswith(".") and TEMP_MARKER in entry.name and entry.is_file():
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:
                pass
    if removed:
        fsync_dir(directory)
    return removed


def allocated_bytes(path: str) -> int:
    """Bytes actually allocated on disk for ``path`` (st_blocks * 512). Raises OSError."""
    return os.stat(path).st_blocks * 512


def space(path: str) -> tuple[int, int]:
    """(total_bytes, available_bytes) of the filesystem holding ``path``; available
    is what a non-root writer may use. Raises OSError."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

"""Files in the pool: crash-safe create, grow and remove of images, small records,
space and identity. (Copies of images, reflinks and sparse copies: linux/copies.py.)

An image is created under a temporary name and renamed into place only when it is
complete and on disk, so after a crash a volume file either exists at its full size
or not at all; leftovers carry :data:`TEMP_MARKER` in their name and start-up
reconciliation clears them. Growing a thin image without allocating is
:func:`grow_image` with ``preallocate=False``.
"""

from __future__ import annotations

import errno as _errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

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


def temp_name(path: str) -> str:
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
    tmp = temp_name(path)
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
        rename_noreplace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def rename_noreplace(src: str, dst: str) -> None:
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


def unlink_quietly(path: str) -> None:
    """Remove `path` if it is there. Idempotent; raises OSError other than ENOENT."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


def file_size(path: str) -> int:
    """The apparent size of ``path`` in bytes (st_size). Read-only. Raises OSError
    (FileNotFoundError when it is missing)."""
    return os.stat(path).st_size


def allocated_bytes(path: str) -> int:
    """Bytes actually allocated on disk for ``path`` (st_blocks * 512). Raises OSError."""
    return os.stat(path).st_blocks * 512


def space(path: str) -> tuple[int, int]:
    """(total_bytes, available_bytes) of the filesystem holding ``path``; available
    is what a non-root writer may use. Raises OSError."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


# ---- small records --------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically: written under a temporary name in
    the same directory, fsynced, renamed over ``path``, directory fsynced. A crash
    leaves the old content or the new, never a mix (a stale temp file at worst, which
    :func:`remove_stale_temp_files` clears). Idempotent. Raises OSError (ENOSPC,
    EIO, EROFS, ...)."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def read_small(path: str, limit: int = 1 << 20) -> bytes:
    """The content of a small file (at most ``limit`` bytes are read). Raises OSError
    (FileNotFoundError when it is missing).

    With os.open/os.read rather than open(): a buffered file object asks isatty (a
    failing TCGETS ioctl) on every open, and sysfs attributes and mountinfo are read
    on every RPC."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    """Whether ``path`` exists (following symlinks). Never raises."""
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    """Whether ``path`` is a directory (following symlinks). Never raises."""
    return os.path.isdir(path)


def resolve(path: str) -> str:
    """``path`` with every symlink resolved (realpath). Never raises."""
    return os.path.realpath(path)


def lstat(path: str) -> os.stat_result:
    """``path``'s own status (a symlink is not followed). Raises OSError."""
    return os.lstat(path)


def remove_if_present(path: str) -> bool:
    """Remove the file ``path``; True if there was one. Raises OSError other than
    ENOENT."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to ``mask`` for the block, then restored: what is created
    meanwhile (a socket, SQLite's WAL) is born with no more than it allows. Process-wide,
    not per thread."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def chmod_if_present(path: str, mode: int) -> None:
    """Set ``path``'s mode if it exists. Idempotent. Raises OSError other than ENOENT."""
    try:
        os.chmod(path, mode)
    except FileNotFoundError:
        pass


def open_read_only(path: str) -> int:
    """A read-only descriptor of ``path`` (close-on-exec), e.g. to sync it later.
    Raises OSError."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def datasync(fd: int) -> None:
    """fdatasync(2): the file's data (and the metadata needed to read it) on disk.
    Raises OSError."""
    os.fdatasync(fd)


def close_fd(fd: int) -> None:
    """Close a descriptor from :func:`open_read_only`. Raises OSError."""
    os.close(fd)


def make_dirs(path: str) -> None:
    """Create ``path`` and its parents with the default mode. Idempotent. Raises OSError."""
    os.makedirs(path, exist_ok=True)


def make_private_dir(path: str) -> None:
    """Create ``path`` (and its parents) owner-only (0700). Idempotent. Raises OSError."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def remove_empty_dir(path: str) -> None:
    """Remove the empty directory ``path``. Idempotent: a missing one is fine. Raises
    OSError (ENOTEMPTY, EBUSY for a mount point)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def list_names(directory: str) -> list[str]:
    """The entry names of ``directory``, sorted; [] if it does not exist. Raises
    OSError for other failures (EIO on a failed filesystem)."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def probe_filesystem(directory: str, *, sync: bool = True) -> int:
    """0 when the filesystem holding ``directory`` still accepts a sync, else the
    errno it answers (EIO on a filesystem that shut down after an error or an
    EXT4_IOC_SHUTDOWN, EROFS when it was remounted read-only). Writes nothing: an
    fsync of the directory is cheap when nothing in it is dirty. Never raises."""
    if sync:  # `sync=False`: only the read-only check below, no sync (no cache flush)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return exc.errno or _errno.EIO
        try:
            os.fsync(fd)
        except OSError as exc:
            return exc.errno or _errno.EIO
        finally:
            os.close(fd)
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return _errno.EROFS
    except OSError as exc:
        return exc.errno or _errno.EIO
    return 0


def identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path`` (following no symlink), or None if it cannot be
    read. The same pair the kernel reports for a loop device's backing file. Never
    raises."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def move_aside(path: str, new_path: str) -> bool:
    """Rename ``path`` to ``new_path`` (which must not exist) and fsync the
    directory; False when ``path`` does not exist. Raises OSError."""
    try:
        rename_noreplace(path, new_path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything under it, ignoring what cannot be removed (a
    mount point still busy is left for the caller to report). Idempotent; never raises."""
    shutil.rmtree(path, ignore_errors=True)


def write_and_read_back(path: str, payload: bytes, *, create: bool) -> bytes:
    """Write ``payload`` at offset 0 of ``path`` (a file, made if ``create``, or a block
    device), fsync it, drop it from the page cache and read as many bytes back, so
    what comes back is what reached the disk. Idempotent. Raises OSError."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, len(payload), 0)
    finally:
        os.close(fd)

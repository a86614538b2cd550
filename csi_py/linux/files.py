"""Volume image files in the pool: crash-safe create, grow, clone, remove.

An image is created under a temporary name and renamed into place only when it is
complete and on disk, so after a crash a volume file either exists at its full size
or not at all (DESIGN.md principle 3); leftovers carry :data:`TEMP_MARKER` in their
name and :func:`remove_stale_temp_files` clears them.

Snapshots and clones copy images with a reflink (FICLONE: the new file shares the
old one's extents, copy-on-write) where the pool filesystem can, else with a
sparse-aware copy that moves only the allocated extents (SEEK_DATA/SEEK_HOLE and
copy_file_range) and leaves holes as holes (DESIGN.md principle 5). Growing a thin
image without allocating is :func:`grow_image` with ``preallocate=False``.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator

from csi_py.linux import _libc

TEMP_MARKER = ".tmp-"

# <linux/fs.h>: FICLONE = _IOW(0x94, 9, int).
FICLONE = 0x40049409

# How FICLONE says "these files cannot share extents" (no reflink support, two
# filesystems, a kernel or filesystem without the ioctl, btrfs nodatacow mixed
# with datacow) as opposed to a real failure such as ENOSPC or EIO.
REFLINK_UNSUPPORTED = frozenset(
    {_errno.EOPNOTSUPP, _errno.ENOTTY, _errno.EXDEV, _errno.EINVAL, _errno.ENOSYS}
)
# copy_file_range errnos after which pread/pwrite does the same job: across
# filesystems of different types (EXDEV, again since Linux 5.19), no syscall
# (ENOSYS), or a filesystem that refuses it (EOPNOTSUPP, EINVAL).
_COPY_RANGE_UNSUPPORTED = frozenset({_errno.EXDEV, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.EINVAL})
# copy_file_range per call; also bounds how late a progress report can be.
_COPY_CHUNK = 16 << 20
# The user-space fallback's buffer.
_BUFFER = 1 << 20
# sparse_copy() reports progress at most this often (plus once at the end).
PROGRESS_EVERY = 64 << 20


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


# ---- reflinks and sparse copies ------------------------------------------------


def _open_source(src: str) -> int:
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(_errno.EINVAL, "not a regular file", src)
    return fd


def _create_new(dst: str) -> int:
    return os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ficlone(src_fd: int, dst_fd: int, src: str, dst: str) -> None:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        err = exc.errno or _errno.EIO
        raise OSError(err, f"{os.strerror(err)} (FICLONE {src} -> {dst})", dst) from None


def reflink(src: str, dst: str) -> None:
    """Create ``dst`` (mode 0600) as a reflink of ``src``: it shares all of src's
    extents, copy-on-write, so it costs no data blocks and no time however big src
    is. Not fsynced (see :func:`clone_file` for the crash-safe version).

    NOT idempotent: raises FileExistsError if ``dst`` exists. Raises OSError with
    the errno of FICLONE when the filesystem cannot (EOPNOTSUPP: no reflink support,
    e.g. ext4 or xfs without ``-m reflink=1``; EXDEV: src and dst on different
    filesystems; EINVAL, ENOTTY: see :data:`REFLINK_UNSUPPORTED`) or fails (ENOSPC
    for the metadata); no ``dst`` is left behind then.
    """
    src_fd = _open_source(src)
    try:
        dst_fd = _create_new(dst)
        try:
            _ficlone(src_fd, dst_fd, src, dst)
        except BaseException:
            os.close(dst_fd)
            _unlink_quietly(dst)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)


def supports_reflink(directory: str) -> bool:
    """Whether files in ``directory`` can be reflinked to files in the same
    directory: tries a FICLONE between two tiny temporary files there (named with
    :data:`TEMP_MARKER`, removed again). Not cached: a device number is reused by
    the next filesystem mounted from the same loop device, and the probe costs well
    under a millisecond. Raises OSError if the directory is not writable."""
    first = _temp_name(os.path.join(directory, "reflink-probe"))
    second = _temp_name(os.path.join(directory, "reflink-probe"))
    a = os.open(first, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # One full block: some filesystems only clone block-aligned ranges.
        os.pwrite(a, b"csi-py reflink probe\n".ljust(4096, b"\0"), 0)
        b = _create_new(second)
        try:
            fcntl.ioctl(b, FICLONE, a)
            return True
        except OSError as exc:
            if exc.errno in REFLINK_UNSUPPORTED:
                return False
            raise
        finally:
            os.close(b)
            _unlink_quietly(second)
    finally:
        os.close(a)
        _unlink_quietly(first)


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each allocated range of ``fd`` below ``size``, in order.
    Unwritten (fallocated, never written) extents count as holes, as SEEK_DATA
    reports them."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == _errno.ENXIO:
                return  # nothing but a hole up to the end
            if exc.errno == _errno.EINVAL and offset == 0:
                yield 0, size  # no SEEK_DATA here: all of it is data
                return
            raise
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno != _errno.ENXIO:
                raise
            end = size  # truncated under us
        yield start, end
        offset = end


def _may_share_extents(src_fd: int, dst_fd: int, dst: str) -> bool:
    """Whether copy_file_range between these files might share extents instead of
    copying them: it does (via the filesystem's remap) on the same reflink-capable
    filesystem, e.g. xfs with reflink=1 and btrfs."""
    if os.fstat(src_fd).st_dev != os.fstat(dst_fd).st_dev:
        return False
    return supports_reflink(os.path.dirname(os.path.abspath(dst)))


def _copy_fd(
    src_fd: int,
    dst_fd: int,
    src: str,
    dst: str,
    progress: Callable[[int, int], None] | None,
    share_extents: bool,
) -> int:
    size = os.fstat(src_fd).st_size
    # Holes in the destination come from here: only data extents are written.
    os.ftruncate(dst_fd, size)
    total = sum(end - start for start, end in _data_extents(src_fd, size)) if progress else 0
    in_kernel = share_extents or not _may_share_extents(src_fd, dst_fd, dst)
    buf = bytearray(_BUFFER) if not in_kernel else None
    done = reported = 0
    at_eof = False
    for start, end in _data_extents(src_fd, size):
        pos = start
        while pos < end:
            n = 0
            if in_kernel:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, min(_COPY_CHUNK, end - pos), pos, pos)
                except OSError as exc:
                    if exc.errno not in _COPY_RANGE_UNSUPPORTED:
                        raise
                    in_kernel = False
            if not in_kernel:
                if buf is None:
                    buf = bytearray(_BUFFER)
                n = _copy_through_buffer(src_fd, dst_fd, pos, end - pos, buf)
            if n == 0:
                at_eof = True  # the source got shorter than fstat said: stop at its end
                break
            pos += n
            done += n
            if progress is not None and done - reported >= PROGRESS_EVERY:
                progress(done, total)
                reported = done
        if at_eof:
            break
    if progress is not None and (done != reported or done == 0):
        progress(done, total)
    return done


def _copy_through_buffer(src_fd: int, dst_fd: int, pos: int, count: int, buf: bytearray) -> int:
    view = memoryview(buf)
    n = os.preadv(src_fd, [view[: min(count, len(buf))]], pos)
    written = 0
    while written < n:
        written += os.pwrite(dst_fd, view[written:n], pos + written)
    return n


def _no_space(src: str, dst: str) -> OSError:
    return OSError(_errno.ENOSPC, f"not enough space to copy {src} to {dst}", dst)


def sparse_copy(
    src: str,
    dst: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    share_extents: bool = True,
) -> int:
    """Copy ``src`` into a new file ``dst`` (mode 0600) moving only its allocated
    extents: walks SEEK_DATA/SEEK_HOLE and copies each data extent with
    copy_file_range (pread/pwrite where that is refused, e.g. EXDEV across
    filesystem types), after sizing ``dst`` with ftruncate, so holes stay holes and
    a mostly empty image copies in proportion to its data, never byte for byte.
    Fallocated but unwritten ranges count as holes (use grow_image with
    ``preallocate=True`` afterwards to make the copy thick again). Returns the
    bytes copied. Not fsynced (see :func:`clone_file`).

    ``progress(bytes_done, bytes_total)`` is called at most every
    :data:`PROGRESS_EVERY` bytes and once at the end; the total is the source's
    allocated data. On a reflink-capable filesystem copy_file_range shares extents
    instead of copying them (the kernel remaps); ``share_extents=False`` prevents
    that by copying through user space there, for a copy that owns its blocks.

    NOT idempotent: raises FileExistsError if ``dst`` exists. Raises OSError
    (ENOSPC naming both files, EINVAL when ``src`` is not a regular file, ...); no
    ``dst`` is left behind on failure.
    """
    src_fd = _open_source(src)
    try:
        dst_fd = _create_new(dst)
        try:
            return _copy_fd(src_fd, dst_fd, src, dst, progress, share_extents)
        except BaseException as exc:
            _unlink_quietly(dst)
            if isinstance(exc, OSError) and exc.errno == _errno.ENOSPC:
                raise _no_space(src, dst) from None
            raise
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def clone_file(
    src: str,
    dst: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    allow_reflink: bool = True,
) -> str:
    """Make ``dst`` a crash-safe copy of ``src`` and say how: "reflink" (shared
    extents, see :func:`reflink`) when allowed and the filesystem can, else "copy"
    (:func:`sparse_copy`, holes preserved, ``progress`` as there).

    Written under a temporary name in dst's directory (O_EXCL, mode 0600),
    fsynced, renamed into place without replacing and the directory fsynced, so
    after a crash ``dst`` is either complete or absent (a leftover temporary file
    is cleared by :func:`remove_stale_temp_files`). ``allow_reflink=False`` gives
    a copy that shares no extents with ``src`` (for thick volumes, whose blocks
    must not become copy-on-write).

    NOT idempotent: raises FileExistsError if ``dst`` exists. Raises OSError
    (ENOSPC naming both files, EIO, EINVAL when ``src`` is not a regular file);
    the temporary file is removed on every failure.
    """
    if os.path.lexists(dst):
        raise FileExistsError(_errno.EEXIST, "destination already exists", dst)
    src_fd = _open_source(src)
    try:
        tmp = _temp_name(dst)
        dst_fd = _create_new(tmp)
        try:
            try:
                method = "copy"
                if allow_reflink:
                    try:
                        _ficlone(src_fd, dst_fd, src, dst)
                        method = "reflink"
                    except OSError as exc:
                        if exc.errno not in REFLINK_UNSUPPORTED:
                            raise
                        # A failed FICLONE leaves the destination untouched (empty).
                if method == "copy":
                    _copy_fd(src_fd, dst_fd, src, dst, progress, allow_reflink)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
            _rename_noreplace(tmp, dst)
        except BaseException as exc:
            _unlink_quietly(tmp)
            if isinstance(exc, OSError) and exc.errno == _errno.ENOSPC:
                raise _no_space(src, dst) from None
            raise
    finally:
        os.close(src_fd)
    fsync_dir(os.path.dirname(dst) or ".")
    return method


# ---- small records --------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically: written under a temporary name in
    the same directory, fsynced, renamed over ``path``, directory fsynced. A crash
    leaves the old content or the new, never a mix (a stale temp file at worst, which
    :func:`remove_stale_temp_files` clears). Idempotent. Raises OSError (ENOSPC,
    EIO, EROFS, ...)."""
    tmp = _temp_name(path)
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
        _unlink_quietly(tmp)
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


def list_names(directory: str) -> list[str]:
    """The entry names of ``directory``, sorted; [] if it does not exist. Raises
    OSError for other failures (EIO on a failed filesystem)."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def probe_filesystem(directory: str) -> int:
    """0 when the filesystem holding ``directory`` still accepts a sync, else the
    errno it answers (EIO on a filesystem that shut down after an error or an
    EXT4_IOC_SHUTDOWN, EROFS when it was remounted read-only). Writes nothing: an
    fsync of the directory is cheap when nothing in it is dirty. Never raises."""
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
        _rename_noreplace(path, new_path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True

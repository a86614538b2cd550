"""Copies of image files for snapshots and clones: a reflink (FICLONE: the new file
shares the old one's extents, copy-on-write) where the pool filesystem can, else a
sparse-aware copy that moves only the allocated extents (SEEK_DATA/SEEK_HOLE and
copy_file_range) and leaves holes as holes; never a byte-for-byte copy of holes.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from csi_py.linux.extents import data_ranges
from csi_py.linux.files import fsync_dir, rename_noreplace, temp_name, unlink_quietly

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
# A copy's progress callback: called with (bytes done, bytes total).
Progress = Callable[[int, int], None]


def _open_source(src: str) -> int:
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(_errno.EINVAL, "not a regular file", src)
    return fd


def _create_new(dst: str) -> int:
    return os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


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
            unlink_quietly(dst)
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
    first = temp_name(os.path.join(directory, "reflink-probe"))
    second = temp_name(os.path.join(directory, "reflink-probe"))
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
            unlink_quietly(second)
    finally:
        os.close(a)
        unlink_quietly(first)


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each allocated range of ``fd`` below ``size``, in order (the
    walk of linux/extents.py). Unwritten (fallocated, never written) extents count as
    holes, as SEEK_DATA reports them."""
    for start, length in data_ranges(fd, size):
        yield start, start + length


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
    progress: Progress | None,
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


@contextmanager
def _source_and_new(src: str, new: str, dst: str) -> Iterator[tuple[int, int]]:
    """``src`` opened to read and the file ``new`` created (O_EXCL, 0600), both
    closed on the way out; ``new`` is removed when the body fails, and ENOSPC is
    raised again naming ``src`` and ``dst``. Raises OSError (FileExistsError when
    ``new`` exists, which is then left alone)."""
    src_fd = _open_source(src)
    try:
        dst_fd = _create_new(new)
        try:
            try:
                yield src_fd, dst_fd
            finally:
                os.close(dst_fd)
        except BaseException as exc:
            unlink_quietly(new)
            if isinstance(exc, OSError) and exc.errno == _errno.ENOSPC:
                raise _no_space(src, dst) from None
            raise
    finally:
        os.close(src_fd)


def sparse_copy(src: str, dst: str, *, progress: Progress | None = None,
                share_extents: bool = True) -> int:
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
    with _source_and_new(src, dst, dst) as (src_fd, dst_fd):
        return _copy_fd(src_fd, dst_fd, src, dst, progress, share_extents)


def clone_file(src: str, dst: str, *, progress: Progress | None = None,
               allow_reflink: bool = True) -> str:
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
    tmp = temp_name(dst)
    with _source_and_new(src, tmp, dst) as (src_fd, dst_fd):
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
        # Renamed with the file still open: the name moves, the open file does not.
        rename_noreplace(tmp, dst)
    fsync_dir(os.path.dirname(dst) or ".")
    return method

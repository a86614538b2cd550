"""Which byte ranges of an image file hold data, and which differ between two images:
the kernel's view for changed-block tracking (the CSI SnapshotMetadata service).

- Allocated ranges come from SEEK_DATA / SEEK_HOLE (unwritten extents count as holes).
- Changed ranges between two snapshots come from their extent maps (FS_IOC_FIEMAP):
  where both map a range to the same physical blocks (two reflinked copies that still
  share them), it is unchanged; where both are holes or unwritten, it reads as zeros
  in both and is unchanged; everything else changed. Where an extent map cannot tell
  (no FIEMAP, or extents flagged unknown/delayed/encoded/inline), only the allocated
  parts of that range are read and compared, block by block.

All ranges are (offset, length) in bytes, sorted, non-overlapping and merged when
adjacent. Read-only and idempotent.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1  # flush dirty pages first, so the map is the one on disk
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, flags
EXTENT_LAST = 0x1
EXTENT_UNWRITTEN = 0x800
# Extents whose physical address says nothing about their content.
EXTENT_OPAQUE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400  # unknown, delalloc,
# encoded, encrypted, not aligned, inline, tail
_BATCH = 512
COMPARE_BLOCK = 4096  # the granularity of a byte comparison (a filesystem block)
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Extent:
    """One extent of a file as FIEMAP reports it: bytes at file offset `logical` stored
    at byte `physical` on the filesystem's device, with the kernel's FIEMAP_EXTENT_*
    flags."""

    logical: int
    physical: int
    length: int
    flags: int


def data_ranges(fd: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(offset, length) of each allocated range of ``fd`` in [start, size), in order.
    A filesystem without SEEK_DATA reports all of it as data. Raises OSError."""
    offset = start
    while offset < size:
        try:
            begin = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno == errno.EINVAL:
                yield offset, size - offset
                return
            raise
        if begin >= size:
            return
        try:
            end = min(os.lseek(fd, begin, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            end = size
        yield begin, end - begin
        offset = end


def fiemap(fd: int, size: int) -> list[Extent] | None:
    """The extent map of ``fd`` below ``size`` (after syncing it), or None when the
    filesystem has no FIEMAP. Raises OSError for other failures."""
    extents: list[Extent] = []
    start = 0
    flags = FIEMAP_FLAG_SYNC
    while start < size:
        buf = bytearray(_FIEMAP_HEADER.size + _BATCH * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(buf, 0, start, size - start, flags, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return None
            raise
        mapped = _FIEMAP_HEADER.unpack_from(buf, 0)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            logical, physical, length, eflags = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size)
            if logical >= size:
                last = True
                break
            length = min(length, size - logical)
            extents.append(Extent(logical, physical, length, eflags))
            last = last or bool(eflags & EXTENT_LAST)
        if last:
            break
        tail = extents[-1]
        start = tail.logical + tail.length
        flags = 0  # synced once is enough
    return extents


# A segment's state in one file: ("zero", 0) reads as zeros; ("data", physical address of
# its first byte); ("opaque", 0) the map cannot tell.
_ZERO, _DATA, _OPAQUE = "zero", "data", "opaque"


def _states(extents: list[Extent], cuts: list[int]) -> list[tuple[str, int]]:
    """The state of each segment [cuts[i], cuts[i+1]) in a file with ``extents``."""
    out = []
    j = 0
    for a in cuts[:-1]:
        while j < len(extents) and extents[j].logical + extents[j].length <= a:
            j += 1
        if j < len(extents) and extents[j].logical <= a:
            ext = extents[j]
            if ext.flags & EXTENT_OPAQUE:
                out.append((_OPAQUE, 0))
            elif ext.flags & EXTENT_UNWRITTEN:
                out.append((_ZERO, 0))
            else:
                out.append((_DATA, ext.physical + (a - ext.logical)))
        else:
            out.append((_ZERO, 0))  # a hole
    return out


def classify(map_b: list[Extent], map_t: list[Extent], start: int, size: int
             ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split [start, size) by two reflinked files' extent maps into (changed, undecided)
    ranges; the rest is unchanged. Unchanged: both read as zeros (holes or unwritten
    extents), or both map to the same physical bytes. Undecided: either map cannot tell
    (an opaque extent). Changed: anything else. Pure."""
    cuts = sorted({start, size, *(
        p for e in (*map_b, *map_t) for p in (e.logical, e.logical + e.length)
        if start < p < size)})
    states_b, states_t = _states(map_b, cuts), _states(map_t, cuts)
    changed: list[tuple[int, int]] = []
    undecided: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        sb, st = states_b[i], states_t[i]
        if _OPAQUE in (sb[0], st[0]):
            undecided.append((a, b - a))
        elif sb != st:
            changed.append((a, b - a))
    return list(_merge(iter(changed))), list(_merge(iter(undecided)))


def _merge(ranges: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    current: tuple[int, int] | None = None
    for off, length in ranges:
        if length <= 0:
            continue
        if current is not None and current[0] + current[1] == off:
            current = (current[0], current[1] + length)
            continue
        if current is not None:
            yield current
        current = (off, length)
    if current is not None:
        yield current


def _compare_blocks(fd_a: int, fd_b: int, off: int, end: int) -> Iterator[tuple[int, int]]:
    """The COMPARE_BLOCK-sized blocks in [off, end) whose bytes differ (a short read past
    one file's end counts as zeros)."""
    pos = off
    while pos < end:
        n = min(_READ_CHUNK, end - pos)
        a = os.pread(fd_a, n, pos)
        b = os.pread(fd_b, n, pos)
        if len(a) < n:
            a += bytes(n - len(a))
        if len(b) < n:
            b += bytes(n - len(b))
        if a != b:
            for i in range(0, n, COMPARE_BLOCK):
                if a[i : i + COMPARE_BLOCK] != b[i : i + COMPARE_BLOCK]:
                    yield pos + i, min(COMPARE_BLOCK, n - i)
        pos += n


def _align(off: int, end: int) -> tuple[int, int]:
    return off - off % COMPARE_BLOCK, -(-end // COMPARE_BLOCK) * COMPARE_BLOCK


def compare_allocated(fd_a: int, fd_b: int, size: int, start: int = 0
                      ) -> Iterator[tuple[int, int]]:
    """Changed ranges by reading only what is allocated in either file (holes in both
    are equal) and comparing it block by block. Raises OSError."""
    size_a, size_b = os.fstat(fd_a).st_size, os.fstat(fd_b).st_size
    spans = sorted([*data_ranges(fd_a, min(size, size_a), start),
                    *data_ranges(fd_b, min(size, size_b), start)])
    union: list[tuple[int, int]] = []
    for off, length in spans:
        a, b = _align(off, off + length)
        a, b = max(a, start - start % COMPARE_BLOCK), min(b, size)
        if union and a <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], b))
        else:
            union.append((a, b))
    return _merge(rng for a, b in union for rng in _compare_blocks(fd_a, fd_b, a, b))


@dataclass(frozen=True)
class Delta:
    """Changed ranges and how they were found ("extents" or "compare")."""

    ranges: Iterator[tuple[int, int]]
    method: str


def changed_ranges(base: str, target: str, start: int = 0, *, reflinked: bool = True
                   ) -> Delta:
    """The ranges of ``target`` (from ``start`` to its size) whose content may differ
    from ``base``, from the two files' extent maps where they tell, else by comparing
    allocated blocks. ``reflinked``: both are reflinks of one file, so blocks they do
    not share were written since; without it (copies) extents tell nothing and the
    allocated blocks are compared. Raises OSError (missing files, I/O errors)."""
    fd_b = os.open(base, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_t = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(fd_b)
        raise
    size = os.fstat(fd_t).st_size
    same_fs = os.fstat(fd_b).st_dev == os.fstat(fd_t).st_dev
    map_b = fiemap(fd_b, os.fstat(fd_b).st_size) if same_fs and reflinked else None
    map_t = fiemap(fd_t, size) if map_b is not None else None

    def generate() -> Iterator[tuple[int, int]]:
        try:
            if map_b is None or map_t is None:
                yield from compare_allocated(fd_b, fd_t, size, start)
                return
            changed, undecided = classify(map_b, map_t, start, size)
            pieces = list(changed)
            for a, length in undecided:
                pieces.extend(_compare_blocks(fd_b, fd_t, *_align(a, a + length)))
            yield from _merge(iter(sorted(pieces)))
        finally:
            os.close(fd_b)
            os.close(fd_t)

    return Delta(generate(), "extents" if map_t is not None else "compare")


def allocated_ranges(path: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """The allocated ranges of ``path`` from ``start``, merged. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def generate() -> Iterator[tuple[int, int]]:
        try:
            yield from _merge(data_ranges(fd, os.fstat(fd).st_size, start))
        finally:
            os.close(fd)

    return generate()

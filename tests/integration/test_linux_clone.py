"""Snapshot and clone copies of image files: reflink on xfs (reflink=1), the sparse
copy on ext4, crash-safe clone_file, on real filesystems made on loop devices in
the test's tmp dir (the tmp dir's own filesystem could be anything)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from csi_py.linux import copies, files
from csi_py.linux.copies import (
    PROGRESS_EVERY,
    clone_file,
    reflink,
    sparse_copy,
    supports_reflink,
)
from csi_py.linux.exec import run
from csi_py.linux.files import TEMP_MARKER, allocated_bytes
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration

# The image the tests copy: 256 MiB long, 64 MiB of it data in 8 extents.
IMAGE_SIZE = 256 * MiB
DATA_EXTENTS = [(i * 32 * MiB, 8 * MiB) for i in range(8)]
DATA_BYTES = sum(n for _, n in DATA_EXTENTS)


def mounted(kit, fs_type: str, name: str, size: int = 512 * MiB, mkfs: list[str] | None = None):
    """A fresh filesystem on a loop device, mounted at tmp/<name>."""
    dev = kit.device(size, name=f"{name}.img")
    if mkfs is None:
        kit.fs.format(dev.path, fs_type)
    else:
        run([*mkfs, dev.path])
    mnt = kit.dir(name)
    kit.mounts.mount(dev.path, mnt, fs_type)
    return mnt


@pytest.fixture
def xfs_reflink(kit):
    return mounted(kit, "xfs", "xfs-reflink", mkfs=["mkfs.xfs", "-q", "-f", "-m", "reflink=1"])


@pytest.fixture
def ext4(kit):
    return mounted(kit, "ext4", "ext4", size=768 * MiB)


def make_source(directory: str, name: str = "src.img") -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
        for offset, length in DATA_EXTENTS:
            f.seek(offset)
            f.write(os.urandom(length))
        os.fsync(f.fileno())
    return path


def data_map(path: str) -> list[tuple[int, int]]:
    """The file's data ranges, walked with SEEK_DATA/SEEK_HOLE (independently of
    the code under test)."""
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return ranges


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def settle(path: str) -> None:
    """Flush the filesystem so statvfs counts what was allocated."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    subprocess.run(["sync", "-f", path], check=True)


def leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if TEMP_MARKER in n]


# ---- reflink ------------------------------------------------------------------------


def test_supports_reflink(xfs_reflink, ext4, kit):
    assert supports_reflink(xfs_reflink) is True
    assert supports_reflink(ext4) is False
    plain_xfs = mounted(kit, "xfs", "xfs-plain", mkfs=["mkfs.xfs", "-q", "-f", "-m", "reflink=0"])
    assert supports_reflink(plain_xfs) is False
    for d in (xfs_reflink, ext4, plain_xfs):
        assert leftovers(d) == []


def test_clone_file_reflinks_on_xfs_and_shares_extents(xfs_reflink):
    src = make_source(xfs_reflink)
    settle(xfs_reflink)
    before = free_bytes(xfs_reflink)
    calls = []
    dst = os.path.join(xfs_reflink, "snap.img")
    assert clone_file(src, dst, progress=lambda d, t: calls.append((d, t))) == "reflink"
    settle(xfs_reflink)
    # Shared extents: the 64 MiB of data cost (next to) nothing a second time.
    assert before - free_bytes(xfs_reflink) < 4 * MiB
    assert sha256(dst) == sha256(src)
    assert data_map(dst) == data_map(src)
    assert os.stat(dst).st_mode & 0o777 == 0o600
    out = run(["filefrag", "-v", dst]).stdout.decode()
    assert "shared" in out
    assert calls == []  # nothing was copied
    assert leftovers(xfs_reflink) == []
    # Copy-on-write: changing the clone leaves the source as it was.
    src_sum = sha256(src)
    with open(dst, "r+b") as f:
        f.write(b"changed")
    assert sha256(src) == src_sum


def test_reflink_function(xfs_reflink, ext4):
    src = make_source(xfs_reflink)
    dst = os.path.join(xfs_reflink, "r.img")
    reflink(src, dst)
    assert sha256(dst) == sha256(src)
    with pytest.raises(FileExistsError):
        reflink(src, dst)
    # Across filesystems: EXDEV, and nothing left behind.
    other = os.path.join(ext4, "r.img")
    with pytest.raises(OSError) as exc:
        reflink(src, other)
    assert exc.value.errno == errno.EXDEV and src in str(exc.value)
    assert not os.path.exists(other)


def test_reflink_refused_on_ext4(ext4):
    src = make_source(ext4)
    dst = os.path.join(ext4, "r.img")
    with pytest.raises(OSError) as exc:
        reflink(src, dst)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert not os.path.exists(dst)


# ---- sparse copy --------------------------------------------------------------------


def test_clone_file_falls_back_to_sparse_copy_on_ext4(ext4):
    src = make_source(ext4)
    calls: list[tuple[int, int]] = []
    dst = os.path.join(ext4, "snap.img")
    assert clone_file(src, dst, progress=lambda d, t: calls.append((d, t))) == "copy"
    assert os.path.getsize(dst) == IMAGE_SIZE
    # Holes stay holes: the same data ranges, about the same allocation.
    assert data_map(dst) == data_map(src) == [(o, o + n) for o, n in DATA_EXTENTS]
    assert abs(allocated_bytes(dst) - allocated_bytes(src)) < MiB
    assert allocated_bytes(dst) < DATA_BYTES + MiB
    assert sha256(dst) == sha256(src)
    # Progress: monotonic, at most every PROGRESS_EVERY bytes, ending at the total.
    assert calls and calls[-1] == (DATA_BYTES, DATA_BYTES)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) <= DATA_BYTES // PROGRESS_EVERY + 1
    assert leftovers(ext4) == []


def test_sparse_copy_progress_is_spaced(ext4):
    src = os.path.join(ext4, "big.img")
    with open(src, "wb") as f:
        f.truncate(512 * MiB)
        f.write(os.urandom(200 * MiB))
    calls: list[tuple[int, int]] = []
    dst = os.path.join(ext4, "copy.img")
    assert sparse_copy(src, dst, progress=lambda d, t: calls.append((d, t))) == 200 * MiB
    assert calls[-1] == (200 * MiB, 200 * MiB)
    steps = [b - a for (a, _), (b, _) in zip([(0, 0), *calls], calls, strict=False)]
    assert all(step >= PROGRESS_EVERY for step in steps[:-1])
    assert len(calls) == 4  # 64, 128, 192, 200 MiB
    with pytest.raises(FileExistsError):
        sparse_copy(src, dst)


@pytest.mark.parametrize("size", [0, 64 * MiB])
def test_sparse_copy_of_empty_and_all_hole_files(ext4, size):
    src = os.path.join(ext4, "hole.img")
    with open(src, "wb") as f:
        f.truncate(size)
    calls: list[tuple[int, int]] = []
    dst = src + ".copy"
    assert sparse_copy(src, dst, progress=lambda d, t: calls.append((d, t))) == 0
    assert os.path.getsize(dst) == size and allocated_bytes(dst) == 0
    assert calls == [(0, 0)]


def test_sparse_copy_across_filesystem_types_uses_read_write(xfs_reflink, ext4, monkeypatch):
    # copy_file_range between an xfs and an ext4 file is EXDEV (Linux >= 5.19);
    # the copy falls back to pread/pwrite and is still sparse.
    src = make_source(xfs_reflink)
    refused = []
    real_cfr = os.copy_file_range

    def spy(*args, **kw):
        try:
            return real_cfr(*args, **kw)
        except OSError as exc:
            refused.append(exc.errno)
            raise

    monkeypatch.setattr(copies.os, "copy_file_range", spy)
    dst = os.path.join(ext4, "copy.img")
    assert clone_file(src, dst) == "copy"
    assert sha256(dst) == sha256(src)
    assert data_map(dst) == data_map(src)
    assert refused in ([], [errno.EXDEV])  # [] on kernels that copy across types


def test_sparse_copy_fallback_when_copy_file_range_is_missing(ext4, monkeypatch):
    src = make_source(ext4)

    def enosys(*args, **kw):
        raise OSError(errno.ENOSYS, "no copy_file_range")

    monkeypatch.setattr(copies.os, "copy_file_range", enosys)
    dst = os.path.join(ext4, "copy.img")
    assert sparse_copy(src, dst) == DATA_BYTES
    assert sha256(dst) == sha256(src) and data_map(dst) == data_map(src)


def test_copy_without_reflink_on_xfs_owns_its_blocks(xfs_reflink):
    # On a reflink filesystem copy_file_range itself shares extents (the kernel
    # remaps), so "no reflink" must also avoid it to get independent blocks.
    src = make_source(xfs_reflink)
    settle(xfs_reflink)
    before = free_bytes(xfs_reflink)
    shared = os.path.join(xfs_reflink, "shared.img")
    assert sparse_copy(src, shared) == DATA_BYTES
    settle(xfs_reflink)
    assert before - free_bytes(xfs_reflink) < 4 * MiB
    own = os.path.join(xfs_reflink, "own.img")
    assert clone_file(src, own, allow_reflink=False) == "copy"
    settle(xfs_reflink)
    assert before - free_bytes(xfs_reflink) >= DATA_BYTES
    assert "shared" not in run(["filefrag", "-v", own]).stdout.decode()
    assert sha256(own) == sha256(src) and data_map(own) == data_map(src)


def test_fallocated_but_unwritten_ranges_copy_as_holes(ext4):
    src = os.path.join(ext4, "thick.img")
    files.create_image(src, 32 * MiB, preallocate=True)
    dst = os.path.join(ext4, "copy.img")
    assert clone_file(src, dst) == "copy"
    assert allocated_bytes(dst) == 0
    # grow_image with preallocate=True makes the copy thick again.
    files.grow_image(dst, 32 * MiB, preallocate=True)
    assert allocated_bytes(dst) >= 32 * MiB


# ---- failures -----------------------------------------------------------------------


def test_clone_file_refuses_existing_destination(ext4):
    src = make_source(ext4)
    dst = os.path.join(ext4, "dst.img")
    with open(dst, "wb") as f:
        f.write(b"mine")
    with pytest.raises(FileExistsError):
        clone_file(src, dst)
    assert open(dst, "rb").read() == b"mine"
    assert leftovers(ext4) == []


def test_clone_file_of_directory_or_missing_source(ext4):
    with pytest.raises(OSError) as exc:
        clone_file(ext4, os.path.join(ext4, "d.img"))
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        clone_file(os.path.join(ext4, "missing"), os.path.join(ext4, "m.img"))
    assert leftovers(ext4) == [] and sorted(os.listdir(ext4)) == ["lost+found"]


def test_clone_file_enospc_removes_temp(kit, ext4):
    small = kit.dir("small")
    kit.mounts.mount("csipy-small", small, "tmpfs", ["size=16m"])
    src = make_source(ext4)
    dst = os.path.join(small, "snap.img")
    with pytest.raises(OSError) as exc:
        clone_file(src, dst)
    assert exc.value.errno == errno.ENOSPC
    assert src in str(exc.value) and dst in str(exc.value)
    assert os.listdir(small) == []
    assert free_bytes(small) == 16 * MiB


def test_clone_file_failure_midway_removes_temp(ext4, monkeypatch):
    src = make_source(ext4)

    def broken(*args, **kw):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(copies.os, "copy_file_range", broken)
    dst = os.path.join(ext4, "snap.img")
    with pytest.raises(OSError) as exc:
        clone_file(src, dst)
    assert exc.value.errno == errno.EIO
    assert not os.path.exists(dst) and leftovers(ext4) == []

"""Image files: crash-safe create, grow, remove; ENOSPC on a small tmpfs."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from csi_py.linux import files
from csi_py.linux.files import (
    TEMP_MARKER,
    allocated_bytes,
    create_image,
    fsync_dir,
    grow_image,
    remove_file,
    remove_stale_temp_files,
    space,
)
from tests.lifecycle import MiB


def leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if TEMP_MARKER in n]


def test_create_thin(pool):
    path = str(pool / "thin.img")
    create_image(path, 256 * MiB, preallocate=False)
    st = os.stat(path)
    assert st.st_size == 256 * MiB
    assert allocated_bytes(path) < MiB
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert leftovers(pool) == []


def test_create_thick(pool):
    path = str(pool / "thick.img")
    create_image(path, 16 * MiB, preallocate=True)
    assert os.path.getsize(path) == 16 * MiB
    assert allocated_bytes(path) >= 16 * MiB


def test_create_zero_size(pool):
    path = str(pool / "zero.img")
    create_image(path, 0, preallocate=True)
    assert os.path.getsize(path) == 0


def test_create_refuses_existing(pool):
    path = str(pool / "x.img")
    create_image(path, MiB, preallocate=False)
    with pytest.raises(FileExistsError):
        create_image(path, 2 * MiB, preallocate=False)
    assert os.path.getsize(path) == MiB
    assert leftovers(pool) == []


def test_create_refuses_negative(pool):
    with pytest.raises(ValueError):
        create_image(str(pool / "neg.img"), -1, preallocate=False)


def test_create_does_not_replace_a_file_that_appears_meanwhile(pool, monkeypatch):
    # Someone creates the file between the existence check and the rename:
    # RENAME_NOREPLACE must refuse rather than overwrite it.
    path = str(pool / "race.img")
    real_temp = files.temp_name

    def temp_and_race(p: str) -> str:
        with open(path, "wb") as f:
            f.write(b"theirs")
        return real_temp(p)

    monkeypatch.setattr(files, "temp_name", temp_and_race)
    with pytest.raises(FileExistsError):
        create_image(path, MiB, preallocate=False)
    assert open(path, "rb").read() == b"theirs"
    assert leftovers(pool) == []


def test_create_falls_back_to_link_without_renameat2(pool, monkeypatch):
    monkeypatch.setattr(files._libc, "renameat2_noreplace", lambda s, d: errno.ENOSYS)
    path = str(pool / "old-libc.img")
    create_image(path, MiB, preallocate=False)
    assert os.path.getsize(path) == MiB and leftovers(pool) == []
    with pytest.raises(FileExistsError):
        create_image(path, MiB, preallocate=False)
    assert leftovers(pool) == []


@pytest.fixture
def small_fs(kit):
    """A 4 MiB tmpfs inside the test's tmp dir."""
    mnt = kit.dir("small")
    kit.mounts.mount("csipy-small", mnt, "tmpfs", ["size=4m"])
    yield mnt
    kit.mounts.unmount(mnt)


@pytest.mark.integration
def test_create_thick_enospc_leaves_nothing(small_fs):
    path = os.path.join(small_fs, "big.img")
    with pytest.raises(OSError) as exc:
        create_image(path, 64 * MiB, preallocate=True)
    assert exc.value.errno == errno.ENOSPC
    assert path in str(exc.value)
    assert os.listdir(small_fs) == []
    total, avail = space(small_fs)
    assert total == 4 * MiB and avail == 4 * MiB
    # Thin still "fits": sparse files are the pool's overcommit.
    create_image(path, 64 * MiB, preallocate=False)


@pytest.mark.integration
def test_grow_thick_enospc_restores_size(small_fs):
    path = os.path.join(small_fs, "vol.img")
    create_image(path, MiB, preallocate=True)
    with pytest.raises(OSError) as exc:
        grow_image(path, 64 * MiB, preallocate=True)
    assert exc.value.errno == errno.ENOSPC
    assert os.path.getsize(path) == MiB
    assert space(small_fs)[1] >= 2 * MiB  # the partial allocation was given back


def test_grow_thin_and_thick(pool):
    thin = str(pool / "thin.img")
    create_image(thin, MiB, preallocate=False)
    grow_image(thin, 8 * MiB, preallocate=False)
    assert os.path.getsize(thin) == 8 * MiB and allocated_bytes(thin) < MiB
    grow_image(thin, 8 * MiB, preallocate=False)  # idempotent
    thick = str(pool / "thick.img")
    create_image(thick, MiB, preallocate=True)
    grow_image(thick, 8 * MiB, preallocate=True)
    assert os.path.getsize(thick) == 8 * MiB and allocated_bytes(thick) >= 8 * MiB


def test_grow_never_shrinks(pool):
    path = str(pool / "v.img")
    create_image(path, 4 * MiB, preallocate=False)
    with pytest.raises(ValueError, match="shrink"):
        grow_image(path, MiB, preallocate=False)
    assert os.path.getsize(path) == 4 * MiB


def test_grow_missing(pool):
    with pytest.raises(FileNotFoundError):
        grow_image(str(pool / "nope.img"), MiB, preallocate=False)


def test_remove_file_idempotent(pool):
    path = str(pool / "gone.img")
    create_image(path, MiB, preallocate=False)
    remove_file(path)
    assert not os.path.exists(path)
    remove_file(path)


def test_remove_stale_temp_files(pool):
    stale = pool / f".vol.img{TEMP_MARKER}abcdef"
    stale.write_bytes(b"x")
    keep = pool / "vol.img"
    keep.write_bytes(b"y")
    assert remove_stale_temp_files(str(pool)) == [str(stale)]
    assert os.listdir(pool) == ["vol.img"]
    assert remove_stale_temp_files(str(pool)) == []


def test_space_and_fsync_dir(pool):
    total, avail = space(str(pool))
    st = os.statvfs(pool)
    assert total == st.f_blocks * st.f_frsize and 0 < avail <= total
    fsync_dir(str(pool))
    (pool / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(str(pool / "f"))


def test_write_and_read_back(pool):
    path = str(pool / "data.bin")
    payload = os.urandom(MiB)
    assert files.write_and_read_back(path, payload, create=True) == payload
    assert (pool / "data.bin").read_bytes() == payload
    # Again over the same file: the same bytes, nothing appended.
    assert files.write_and_read_back(path, payload, create=False) == payload
    assert os.path.getsize(path) == MiB
    with pytest.raises(FileNotFoundError):
        files.write_and_read_back(str(pool / "absent"), payload, create=False)


def test_remove_tree_is_idempotent(pool):
    (pool / "tree" / "sub").mkdir(parents=True)
    (pool / "tree" / "sub" / "f").write_bytes(b"x")
    files.remove_tree(str(pool / "tree"))
    assert not (pool / "tree").exists()
    files.remove_tree(str(pool / "tree"))

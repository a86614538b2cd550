"""Freezing and thawing real ext4, xfs and btrfs mounts (FIFREEZE/FITHAW), and the
snapshot they exist for: a copy of a frozen filesystem's image is consistent."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from csi_py.linux.copies import clone_file
from csi_py.linux.errors import DeviceBusy, FreezeError
from csi_py.linux.exec import run
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration

SIZE = {"ext4": 64 * MiB, "xfs": 320 * MiB, "btrfs": 256 * MiB}


# Writes started by this test (blocked ones finish at the thaw).
_writers: list[threading.Event] = []


@pytest.fixture(autouse=True)
def thaw_everything(kit):
    """Thaw every mount of this test before kit's cleanup unmounts it (a frozen
    filesystem survives its unmount and keeps the loop device busy), then let the
    blocked writers finish so nothing keeps a file open there."""
    _writers.clear()
    yield
    for entry in kit.mounts.mounts_under(os.path.realpath(kit.root)):
        try:
            kit.fs.thaw(entry.mount_point)
        except Exception:
            pass
    for done in _writers:
        done.wait(10)


def mounted(kit, fs_type: str, name: str = "mnt"):
    dev = kit.device(SIZE[fs_type], name=f"{name}.img")
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir(name)
    kit.mounts.mount(dev.path, mnt, fs_type)
    return dev, mnt


def start_writer(path: str) -> threading.Event:
    """Write a file from another thread; the event is set when the write is done."""
    done = threading.Event()

    def write() -> None:
        with open(path, "ab") as f:
            f.write(b"written\n")
        done.set()

    _writers.append(done)
    threading.Thread(target=write, daemon=True).start()
    return done


def blocks_writers(mnt: str, name: str = "probe", wait: float = 0.5) -> bool:
    """Whether a write under ``mnt`` stays blocked for ``wait`` seconds; if it does, it
    completes at the thaw."""
    return not start_writer(os.path.join(mnt, name)).wait(wait)


def writes_go_through(mnt: str, name: str = "probe") -> bool:
    """Whether a write under ``mnt`` completes, and so has every write left blocked
    before (so none keeps a file open), waiting up to 30 s, as long as a loaded machine
    may take."""
    start_writer(os.path.join(mnt, name))
    return all(done.wait(30) for done in _writers)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs"])
def test_freeze_blocks_writers_until_thaw(kit, fs_type):
    _, mnt = mounted(kit, fs_type)
    path = os.path.join(mnt, "data")
    with open(path, "wb") as f:
        f.write(b"before\n")
    kit.fs.freeze(mnt)
    done = start_writer(path)
    assert not done.wait(1.0), "a write went through on a frozen filesystem"
    # Reading still works while frozen.
    assert open(path, "rb").read() == b"before\n"
    kit.fs.thaw(mnt)
    assert done.wait(10), "the write did not complete after thaw"
    assert open(path, "rb").read() == b"before\nwritten\n"


def test_freeze_and_thaw_are_idempotent(kit):
    _, mnt = mounted(kit, "ext4")
    kit.fs.thaw(mnt)  # not frozen: fine
    kit.fs.freeze(mnt)
    kit.fs.freeze(mnt)  # already frozen (EBUSY): fine
    kit.fs.thaw(mnt)
    kit.fs.thaw(mnt)
    assert writes_go_through(mnt)


def test_freeze_through_a_bind_mount_freezes_the_filesystem(kit):
    _, mnt = mounted(kit, "ext4")
    pub = kit.dir("pub")
    kit.mounts.bind_mount(mnt, pub)
    kit.fs.freeze(pub)
    assert blocks_writers(mnt)
    kit.fs.thaw(pub)


def test_freeze_refuses_what_is_not_a_mount_point(kit):
    _, mnt = mounted(kit, "ext4")
    sub = os.path.join(mnt, "sub")
    os.mkdir(sub)
    cases = [
        (sub, errno.EINVAL),  # would freeze the whole filesystem
        (kit.dir("plain"), errno.EINVAL),
        (kit.path("missing"), errno.ENOENT),
        (kit.file("a-file"), errno.ENOTDIR),
    ]
    link = kit.path("link")
    os.symlink(mnt, link)
    cases.append((link, errno.ENOTDIR))  # O_DIRECTORY|O_NOFOLLOW on a symlink
    for path, err in cases:
        for op in (kit.fs.freeze, kit.fs.thaw):
            with pytest.raises(FreezeError) as exc:
                op(path)
            assert exc.value.errno == err, (path, op)
            assert path in str(exc.value)
    assert writes_go_through(mnt)


def test_freeze_refuses_root_and_unfreezable_filesystems(kit):
    with pytest.raises(FreezeError) as exc:
        kit.fs.freeze("/")
    assert exc.value.errno == errno.EPERM
    tmpfs = kit.dir("tmpfs")
    kit.mounts.mount("csipy-tmpfs", tmpfs, "tmpfs", ["size=1m"])
    with pytest.raises(FreezeError) as exc:
        kit.fs.freeze(tmpfs)
    assert exc.value.errno == errno.EOPNOTSUPP and "cannot be frozen" in str(exc.value)


def test_frozen_context_freezes_all_and_thaws_all(kit):
    _, first = mounted(kit, "ext4", "first")
    _, second = mounted(kit, "xfs", "second")
    with kit.fs.frozen([first, second]):
        assert blocks_writers(first, "a") and blocks_writers(second, "b")
    assert writes_go_through(first, "c") and writes_go_through(second, "d")


def test_frozen_context_thaws_when_body_raises(kit):
    _, mnt = mounted(kit, "ext4")
    with pytest.raises(RuntimeError, match="snapshot failed"):
        with kit.fs.frozen([mnt]):
            raise RuntimeError("snapshot failed")
    assert writes_go_through(mnt)


def test_frozen_context_thaws_earlier_ones_when_a_later_freeze_fails(kit):
    _, first = mounted(kit, "ext4", "first")
    _, second = mounted(kit, "btrfs", "second")
    entered = False
    with pytest.raises(FreezeError) as exc:
        with kit.fs.frozen([first, second, kit.dir("not-a-mount")]):
            entered = True
    assert exc.value.errno == errno.EINVAL and not entered
    assert writes_go_through(first, "a") and writes_go_through(second, "b")


def test_unmount_of_frozen_filesystem_keeps_device_busy_until_thawed(kit):
    # The kernel lets a frozen filesystem be unmounted but keeps its superblock,
    # frozen, holding the device: thaw before unmounting.
    dev, mnt = mounted(kit, "ext4")
    kit.fs.freeze(mnt)
    kit.mounts.unmount(mnt)
    with pytest.raises(DeviceBusy):
        kit.loops.detach(dev.path)
    kit.mounts.mount(dev.path, mnt, "ext4")  # the same, still frozen, superblock
    done = start_writer(os.path.join(mnt, "probe"))
    assert not done.wait(0.5)
    kit.fs.thaw(mnt)
    assert done.wait(10)
    kit.mounts.unmount(mnt)
    kit.loops.detach(dev.path)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_copy_of_frozen_filesystem_is_consistent(kit, fs_type):
    dev, mnt = mounted(kit, fs_type)
    payload = os.urandom(3 * MiB)
    with open(os.path.join(mnt, "data"), "wb") as f:
        f.write(payload)  # not fsynced: freezing writes it out
    snap = kit.path("snap.img")
    with kit.fs.frozen([mnt]):
        assert clone_file(dev.backing_file, snap) in ("reflink", "copy")
    if fs_type == "ext4":
        # Frozen ext4 is clean: the copy needs no journal replay and no repair.
        run(["e2fsck", "-f", "-n", snap])
        got = run(["debugfs", "-R", "cat /data", snap]).stdout
    else:
        # Frozen xfs keeps a covered log and lazy counters: the copy is consistent
        # after the log recovery of its first (read-write) mount, like after a
        # crash. It has the original's UUID, which xfs refuses to mount twice on
        # one host unless told "nouuid".
        copy = kit.loops.attach(snap)
        view = kit.dir("view")
        kit.mounts.mount(copy.path, view, "xfs", ["nouuid"])
        got = open(os.path.join(view, "data"), "rb").read()
        kit.mounts.unmount(view)
        kit.loops.detach(copy.path)
        run(["xfs_repair", "-n", "-f", snap])
    assert got == payload

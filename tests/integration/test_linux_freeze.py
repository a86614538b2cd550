"""Freezing and thawing real ext4, xfs and btrfs mounts (FIFREEZE/FITHAW), and the
snapshot they exist for: a copy of a frozen filesystem's image is consistent."""

from __future__ import annotations

import errno
import os

import pytest

from csi_py.linux.copies import clone_file
from csi_py.linux.errors import FreezeError
from csi_py.linux.exec import run
from tests.lifecycle import MiB
from tests.write_probes import WriteProbes, thaw_and_finish

pytestmark = pytest.mark.integration

SIZE = {"ext4": 64 * MiB, "xfs": 320 * MiB, "btrfs": 256 * MiB}


@pytest.fixture(autouse=True)
def writes(kit, tmp_path):
    """This test's probe writes; afterwards, before kit's cleanup, every mount of the
    test is thawed and its blocked writes are let finish."""
    probes = WriteProbes()
    yield probes
    thaw_and_finish(kit, str(tmp_path), probes)


def mounted(kit, fs_type: str, name: str = "mnt"):
    dev = kit.device(SIZE[fs_type], name=f"{name}.img")
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir(name)
    kit.mounts.mount(dev.path, mnt, fs_type)
    return dev, mnt


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs"])
def test_freeze_blocks_writers_until_thaw(kit, writes, fs_type):
    _, mnt = mounted(kit, fs_type)
    path = os.path.join(mnt, "data")
    with open(path, "wb") as f:
        f.write(b"before\n")
    kit.fs.freeze(mnt)
    done = writes.start(path)
    assert not done.wait(1.0), "a write went through on a frozen filesystem"
    # Reading still works while frozen.
    assert open(path, "rb").read() == b"before\n"
    kit.fs.thaw(mnt)
    assert done.wait(10), "the write did not complete after thaw"
    assert open(path, "rb").read() == b"before\nwritten\n"


def test_freeze_refuses_root_and_unfreezable_filesystems(kit):
    with pytest.raises(FreezeError) as exc:
        kit.fs.freeze("/")
    assert exc.value.errno == errno.EPERM
    tmpfs = kit.dir("tmpfs")
    kit.mounts.mount("csipy-tmpfs", tmpfs, "tmpfs", ["size=1m"])
    with pytest.raises(FreezeError) as exc:
        kit.fs.freeze(tmpfs)
    assert exc.value.errno == errno.EOPNOTSUPP and "cannot be frozen" in str(exc.value)


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

"""DeleteVolume's "is the image still in use here" check, against real loop devices: it
reads no loop device's sysfs when nothing holds the image (the kernel answers through a
lease on the image), and it still refuses to delete an image that any loop device holds,
also one attached outside the driver's records (by hand, read-only, through a hard link
at another path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from csi_py.linux import loop_sysfs
from tests.lifecycle import BLOCK, MiB, Volumes

pytestmark = pytest.mark.integration


@contextmanager
def losetup(path: str, *extra: str) -> Iterator[str]:
    """A loop device of the test's own on `path` (util-linux, not the code under test),
    detached at the end, also when the test fails."""
    dev = subprocess.run(["losetup", "--find", "--show", *extra, path], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def image_of(driver, vid: str) -> str:
    return os.path.join(driver.pool, "volumes", vid + ".img")


def test_delete_reads_no_loop_device_when_nothing_holds_the_image(driver, monkeypatch):
    v = Volumes(driver.client)
    vid = v.create("unused", BLOCK, 8 * MiB).volume_id
    unrelated = os.path.join(driver.workdir, "unrelated.img")
    with open(unrelated, "wb") as f:
        f.truncate(MiB)
    scans: list[str] = []
    sysfs_reads: list[str] = []
    real_find = loop_sysfs.LoopSysfs.find_by_backing_file
    real_read = loop_sysfs._read

    def find(self, backing_file):  # type: ignore[no-untyped-def]
        scans.append(backing_file)
        return real_find(self, backing_file)

    def read(path, **kw):  # type: ignore[no-untyped-def]
        sysfs_reads.append(path)
        return real_read(path, **kw)

    with losetup(unrelated) as other:
        monkeypatch.setattr(loop_sysfs.LoopSysfs, "find_by_backing_file", find)
        monkeypatch.setattr(loop_sysfs, "_read", read)
        v.delete(vid)
        during_delete = (list(scans), list(sysfs_reads))
        # The spies do catch a scan: it reads every device's sysfs, the test's one too.
        found = loop_sysfs.LoopSysfs().find_by_backing_file(unrelated)
        monkeypatch.undo()
    name = os.path.basename(other)
    assert [d.path for d in found] == [other]
    assert any(f"/{name}/" in p for p in sysfs_reads)
    assert not os.path.exists(image_of(driver, vid))
    assert during_delete == ([], []), "DeleteVolume read the loop devices' sysfs"


@pytest.mark.parametrize("how", ["read-write", "read-only", "hard link"])
def test_delete_refuses_an_image_held_by_a_loop_device_outside_the_records(driver, how):
    v = Volumes(driver.client)
    vid = v.create(f"held-{how.replace(' ', '-')}", BLOCK, 8 * MiB).volume_id
    image = image_of(driver, vid)
    path = image
    if how == "hard link":
        # Attached by another name: no sysfs path names the image, only its inode does.
        path = os.path.join(driver.workdir, "link.img")
        os.link(image, path)
    try:
        with losetup(path, *(["--read-only"] if how == "read-only" else [])) as dev:
            with pytest.raises(grpc.RpcError) as exc:
                v.delete(vid)
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert vid in exc.value.details() and "in use on this node" in exc.value.details()
            if how != "hard link":
                assert dev in exc.value.details()
            assert os.path.exists(image)
    finally:
        if path != image:
            os.unlink(path)
    v.delete(vid)  # detached: now it goes
    assert not os.path.exists(image)
    v.delete(vid)  # idempotent


CHILD = r"""
import fcntl, subprocess, sys, time
from csi_py.linux import loop_sysfs

path = sys.argv[1]
real = fcntl.fcntl
openers = []

def fcntl_then_an_opener(fd, cmd, arg=0):
    done = real(fd, cmd, arg)
    if cmd == fcntl.F_SETLEASE and arg == fcntl.F_WRLCK:
        # Someone opens the image while the lease is held: the kernel signals the
        # lease holder and makes the opener wait until the lease is dropped.
        openers.append(subprocess.Popen([sys.executable, "-c",
                                         f"open({path!r}, 'rb').close()"]))
        time.sleep(0.5)
    return done

loop_sysfs.fcntl.fcntl = fcntl_then_an_opener
assert loop_sysfs.held_open(path) is False
assert openers and openers[0].wait(30) == 0
print("alive")
"""


def test_an_opener_during_the_lease_neither_kills_the_driver_nor_is_refused(tmp_path):
    """The lease is a question, never a lock: a process opening the image at that moment
    waits microseconds (here the half second the test holds it), and the driver, which
    the kernel signals about it, lives on (SIGIO, the default signal, would kill it)."""
    image = tmp_path / "vol.img"
    image.write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", CHILD, str(image)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == "alive"

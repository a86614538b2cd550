"""DeleteVolume's "is the image still in use here" check, against real loop devices: it
reads no loop device's sysfs when nothing holds the image (the kernel answers through a
lease on the image), and it still refuses to delete an image that any loop device holds,
also one attached outside the driver's records (by hand, read-only, through a hard link
at another path)."""

from __future__ import annotations

import os
import subprocess
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

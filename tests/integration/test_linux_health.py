"""Filesystem health (Filesystems.errors) on real filesystems, healthy and with
real recorded errors: ext4's own error counter (raised through its sysfs
trigger_fs_error knob), an xfs shutdown, btrfs checksum errors from a corrupted
data block, and a filesystem forced read-only."""

from __future__ import annotations

import os
import time

import pytest

from csi_py.linux.exec import run
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration

SIZE = {"ext4": 64 * MiB, "xfs": 320 * MiB, "btrfs": 256 * MiB}


def mounted(kit, fs_type: str, options: list[str] | None = None):
    dev = kit.device(SIZE[fs_type])
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, fs_type, options or [])
    return dev, mnt


def trigger_ext4_error(dev, message: str = "csi-py test error") -> None:
    with open(f"/sys/fs/ext4/loop{dev.number}/trigger_fs_error", "w") as f:
        f.write(message)


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs"])
def test_healthy_filesystem_has_no_errors(kit, fs_type):
    dev, mnt = mounted(kit, fs_type)
    with open(os.path.join(mnt, "f"), "wb") as f:
        f.write(os.urandom(MiB))
    assert kit.fs.errors(dev.path, mnt, fs_type) is None
    kit.mounts.unmount(mnt)
    if fs_type == "ext4":
        assert kit.fs.errors(dev.path, None, "ext4") is None  # from the superblock


def test_ext4_errors_while_mounted_and_after_unmount(kit):
    dev, mnt = mounted(kit, "ext4")
    trigger_ext4_error(dev)
    report = wait_for(lambda: kit.fs.errors(dev.path, mnt, "ext4"))
    assert report is not None
    assert report.startswith(f"ext4 on {dev.path} mounted at {mnt}: 1 error(s) recorded")
    assert "trigger_test_error" in report and "EFSCORRUPTED" in report
    assert "e2fsck" in report
    trigger_ext4_error(dev)
    assert wait_for(lambda: "2 error(s)" in (kit.fs.errors(dev.path, mnt, "ext4") or ""))
    # Unmounted, the superblock still says so (the kernel wrote it out).
    kit.mounts.unmount(mnt)
    report = kit.fs.errors(dev.path, None, "ext4")
    assert report is not None and "2 error(s) recorded" in report
    assert "trigger_test_error" in report and "UTC" in report
    # e2fsck clears them.
    run(["e2fsck", "-f", "-y", dev.path], ok_returncodes=(0, 1))
    assert kit.fs.errors(dev.path, None, "ext4") is None


def test_ext4_forced_read_only_is_reported(kit):
    dev, mnt = mounted(kit, "ext4", ["errors=remount-ro"])
    trigger_ext4_error(dev)
    # mountinfo: "emergency_ro" (Linux 6.x) or "ro" in the superblock options.
    report = wait_for(lambda: "read-only" in (kit.fs.errors(dev.path, mnt, "ext4") or ""))
    assert report
    report = kit.fs.errors(dev.path, mnt, "ext4")
    assert report is not None and "1 error(s)" in report
    with pytest.raises(OSError):
        open(os.path.join(mnt, "new"), "w")


def test_xfs_shutdown_is_reported(kit):
    dev, mnt = mounted(kit, "xfs")
    run(["xfs_io", "-x", "-c", "shutdown", mnt])
    report = kit.fs.errors(dev.path, mnt, "xfs")
    assert report is not None and report.startswith(f"xfs on {dev.path} mounted at {mnt}: ")
    assert "shut down" in report and "xfs_repair" in report
    kit.mounts.unmount(mnt)  # a shut-down xfs still unmounts


def test_btrfs_checksum_errors_are_reported(kit):
    dev, mnt = mounted(kit, "btrfs")
    block = b"csi-py corrupt me!".ljust(4096, b".")
    path = os.path.join(mnt, "data")
    with open(path, "wb") as f:
        f.write(block * 64)
        os.fsync(f.fileno())
    kit.mounts.unmount(mnt)
    # Overwrite one data block in the image behind btrfs's back.
    with open(dev.backing_file, "r+b") as f:
        image = f.read()
        offset = image.find(block)
        assert offset >= 0 and image.find(block, offset + len(block) * 64) < 0
        f.seek(offset)
        f.write(b"X" * 4096)
        os.fsync(f.fileno())
    del image
    kit.mounts.mount(dev.path, mnt, "btrfs")
    assert kit.fs.errors(dev.path, mnt, "btrfs") is None
    with pytest.raises(OSError):
        with open(path, "rb") as f:
            f.read()
    report = kit.fs.errors(dev.path, mnt, "btrfs")
    assert report is not None and "corruption_errs" in report and dev.path in report


def test_errors_arguments(kit):
    dev, mnt = mounted(kit, "ext4")
    for fs_type in ("xfs", "btrfs"):
        with pytest.raises(ValueError, match="mounted"):
            kit.fs.errors(dev.path, None, fs_type)
    with pytest.raises(ValueError):
        kit.fs.errors(dev.path, mnt, "vfat")


def test_ext4_shutdown_is_reported(kit):
    # A shut-down ext4 counts no error; mountinfo says "shutdown".
    dev, mnt = mounted(kit, "ext4")
    run(["xfs_io", "-x", "-c", "shutdown", mnt])
    report = kit.fs.errors(dev.path, mnt, "ext4")
    assert report is not None and "shut down" in report

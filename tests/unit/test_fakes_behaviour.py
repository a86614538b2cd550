"""Behaviour of the fakes that the contract test does not cover: action logs,
fault injection, busy simulation, fake statfs, thread safety. No root needed."""

from __future__ import annotations

import errno
import os
import shutil
import threading

import pytest

from csi_py.linux.errors import CommandError, DeviceBusy, LinuxError, LoopError, MountError
from tests.fakes import FAKE_DEV_PREFIX, FakeAction, fake_host
from tests.lifecycle import MiB


@pytest.fixture
def host():
    return fake_host()


def image(tmp_path, name="vol.img", size=64 * MiB) -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def staged(host, tmp_path, fs_type="ext4"):
    dev = host.loops.attach(image(tmp_path))
    host.fs.format(dev.path, fs_type)
    mnt = tmp_path / "staging"
    mnt.mkdir()
    host.mounts.mount(dev.path, str(mnt), fs_type)
    return dev, str(mnt)


def test_devices_are_fake_paths_and_numbers_reused(host, tmp_path):
    a = host.loops.attach(image(tmp_path, "a.img"))
    b = host.loops.attach(image(tmp_path, "b.img"))
    assert (a.path, b.path) == (f"{FAKE_DEV_PREFIX}0", f"{FAKE_DEV_PREFIX}1")
    host.loops.detach(a.path)
    c = host.loops.attach(image(tmp_path, "c.img"))
    assert c.path == a.path  # lowest free, like LOOP_CTL_GET_FREE
    assert not os.path.exists(a.path)  # nothing real in /dev


def test_action_log(host, tmp_path):
    dev, mnt = staged(host, tmp_path)
    pub = tmp_path / "pub"
    pub.mkdir()
    host.mounts.bind_mount(mnt, str(pub), read_only=True)
    host.mounts.unmount(str(pub))
    host.mounts.unmount(str(pub))  # no-op: not logged
    host.mounts.unmount(mnt)
    host.loops.detach(dev.path)
    assert [a.op for a in host.loops.actions] == ["attach", "detach"]
    assert host.loops.actions[0] == FakeAction("attach", dev.path, dev.backing_file, "rw")
    assert host.fs.actions == [FakeAction("format", dev.path, detail="ext4")]
    assert [(a.op, a.target) for a in host.mounts.actions] == [
        ("mount", mnt),
        ("bind_mount", str(pub)),
        ("unmount", str(pub)),
        ("unmount", mnt),
    ]
    assert host.mounts.actions[1].detail == "ro"


def test_fail_next_injects_once(host, tmp_path):
    host.mounts.fail_next("mount", MountError("boom", target="/x", errno=errno.EIO))
    dev = host.loops.attach(image(tmp_path))
    host.fs.format(dev.path, "xfs")
    mnt = tmp_path / "m"
    mnt.mkdir()
    with pytest.raises(MountError, match="boom"):
        host.mounts.mount(dev.path, str(mnt), "xfs")
    assert not host.mounts.is_mounted(str(mnt))
    host.mounts.mount(dev.path, str(mnt), "xfs")
    assert host.mounts.is_mounted(str(mnt))


def test_hold_open_makes_detach_and_unmount_busy(host, tmp_path):
    dev = host.loops.attach(image(tmp_path))
    host.loops.hold_open(dev.path)
    with pytest.raises(DeviceBusy):
        host.loops.detach(dev.path)
    host.loops.release(dev.path)
    host.loops.detach(dev.path)

    dev, mnt = staged(host, tmp_path)
    host.mounts.hold_open(mnt)
    with pytest.raises(DeviceBusy):
        host.mounts.unmount(mnt)
    host.mounts.release(mnt)
    host.mounts.unmount(mnt)


def test_detect_survives_copy_like_a_superblock(host, tmp_path):
    dev = host.loops.attach(image(tmp_path))
    host.fs.format(dev.path, "btrfs", label="data")
    clone = str(tmp_path / "clone.img")
    shutil.copyfile(dev.backing_file, clone)
    copy = host.loops.attach(clone)
    assert host.fs.detect(copy.path) == "btrfs"
    assert host.fs.detect(clone) == "btrfs"  # a plain image file, as with blkid


def test_detect_reads_real_superblock_magic(host, tmp_path):
    path = image(tmp_path, size=MiB)
    with open(path, "r+b") as f:
        f.write(b"XFSB")
    dev = host.loops.attach(path)
    assert host.fs.detect(dev.path) == "xfs"


def test_format_errors(host, tmp_path):
    with pytest.raises(ValueError):
        host.fs.format("/dev/fakeloop0", "ntfs")
    with pytest.raises(ValueError):
        host.fs.format("/dev/fakeloop0", "xfs", label="far-too-long-label")
    with pytest.raises(CommandError):
        host.fs.format("/dev/fakeloop0", "ext4")  # not attached
    ro = host.loops.attach(image(tmp_path), read_only=True)
    with pytest.raises(CommandError):
        host.fs.format(ro.path, "ext4")


def test_fake_statfs_and_grow(host, tmp_path):
    dev, mnt = staged(host, tmp_path, "xfs")
    empty = host.fs.statfs(mnt)
    assert empty.total_bytes == 64 * MiB and empty.used_bytes == 0
    with open(os.path.join(mnt, "data"), "wb") as f:
        f.write(b"x" * MiB)
    used = host.fs.statfs(mnt)
    assert used.used_bytes == MiB and used.available_bytes == 63 * MiB
    assert used.used_inodes == empty.used_inodes + 1
    with open(dev.backing_file, "r+b") as f:
        f.truncate(128 * MiB)
    host.loops.refresh_capacity(dev.path)
    assert host.fs.statfs(mnt).total_bytes == 64 * MiB  # until the fs grows
    with pytest.raises(ValueError):
        host.fs.grow(dev.path, None, "xfs")
    with pytest.raises(CommandError):
        host.fs.grow(dev.path, str(tmp_path), "xfs")  # not mounted there
    host.fs.grow(dev.path, mnt, "xfs")
    assert host.fs.statfs(mnt).total_bytes == 128 * MiB
    assert host.fs.block_device_size(dev.path) == 128 * MiB
    # Outside fake mounts statfs is the real one.
    st = os.statvfs(tmp_path)
    assert host.fs.statfs(str(tmp_path)).total_bytes == st.f_blocks * st.f_frsize


def test_grow_wrong_type(host, tmp_path):
    dev, mnt = staged(host, tmp_path, "ext4")
    with pytest.raises(CommandError):
        host.fs.grow(dev.path, mnt, "btrfs")
    host.fs.grow(dev.path, None, "ext4")
    with pytest.raises(ValueError):
        host.fs.grow(dev.path, mnt, "vfat")


def test_bind_of_host_dir_and_nested_roots(host, tmp_path):
    dev, mnt = staged(host, tmp_path)
    sub = os.path.join(mnt, "a", "b")
    os.makedirs(sub)
    target = tmp_path / "t"
    target.mkdir()
    host.mounts.bind_mount(sub, str(target))
    (entry,) = host.mounts.mounts_at(str(target))
    assert entry.root == "/a/b" and entry.source == dev.path
    assert entry.parent_id != entry.mount_id
    plain = tmp_path / "plain"
    plain.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    host.mounts.bind_mount(str(plain), str(other))
    assert host.mounts.mounts_at(str(other))[0].root == str(plain)


def test_errors_match_real_types(host, tmp_path):
    with pytest.raises(LoopError) as exc:
        host.loops.attach(str(tmp_path))
    assert exc.value.errno == errno.EISDIR
    with pytest.raises(LoopError):
        host.loops.detach("/dev/sda")
    with pytest.raises(LoopError):
        host.loops.set_direct_io("/dev/fakeloop9", True)
    with pytest.raises(LinuxError):
        host.fs.block_device_size("/dev/fakeloop9")
    with pytest.raises(MountError) as exc:
        host.mounts.mount(image(tmp_path), str(tmp_path), "ext4")
    assert exc.value.errno == errno.ENOTBLK
    with pytest.raises(MountError) as exc:
        host.mounts.bind_mount(str(tmp_path / "nope"), str(tmp_path))
    assert exc.value.errno == errno.ENOENT
    assert host.loops.get("/dev/fakeloop9") is None


def test_thread_safe_attach(host, tmp_path):
    paths = [image(tmp_path, f"{i}.img", MiB) for i in range(32)]
    out: list[str] = []

    def work(p: str) -> None:
        out.append(host.loops.attach(p).path)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 32

"""Filesystems against real loop devices: detect, format, grow, statfs."""

from __future__ import annotations

import os
import re
import struct

import pytest

from csi_py.linux import exec as exec_mod
from csi_py.linux.errors import CommandError, GrowNotPermitted, LinuxError, ToolMissing
from csi_py.linux.exec import run
from csi_py.linux.filesystems import ext4 as ext4_mod
from csi_py.linux.filesystems import missing_tools
from csi_py.linux.fs import (
    MIN_FS_BYTES,
    SUPPORTED_FS,
    TOOLS,
    probe_superblock,
)
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration

# xfsprogs >= 5.19 refuses filesystems under 300 MiB; btrfs needs 109 MiB
# (csi_py.linux.filesystems holds each minimum).
SIZE = {"ext4": 64 * MiB, "xfs": 320 * MiB, "btrfs": 256 * MiB}


def test_probe_superblock_pure():
    blank = bytes(70000)
    assert probe_superblock(blank) is None
    assert probe_superblock(b"XFSB" + bytes(70000)) == "xfs"
    btrfs = bytearray(blank)
    btrfs[65536 + 64 : 65536 + 72] = b"_BHRfS_M"
    assert probe_superblock(bytes(btrfs)) == "btrfs"
    both = bytearray(btrfs)
    both[:4] = b"XFSB"
    assert probe_superblock(bytes(both)) == "ambivalent"
    assert probe_superblock(b"short") is None


@pytest.mark.parametrize("fs_type", SUPPORTED_FS)
def test_format_and_detect(kit, fs_type):
    dev = kit.device(SIZE[fs_type])
    assert kit.fs.detect(dev.path) is None
    kit.fs.format(dev.path, fs_type, label="csipy")
    assert kit.fs.detect(dev.path) == fs_type
    # blkid agrees (and so would mount(8)).
    out = run(["blkid", "-p", "-o", "export", dev.path]).stdout.decode()
    assert f"TYPE={fs_type}" in out and "LABEL=csipy" in out
    # Reformatting overwrites: detect follows what was written last.
    other = "ext4" if fs_type != "ext4" else "btrfs"
    if os.path.getsize(dev.backing_file) >= SIZE[other]:
        kit.fs.format(dev.path, other)
        assert kit.fs.detect(dev.path) == other


@pytest.mark.parametrize("fs_type", SUPPORTED_FS)
def test_min_fs_bytes_is_the_real_minimum(kit, fs_type):
    smallest = MIN_FS_BYTES[fs_type]
    dev = kit.device(smallest)
    kit.fs.format(dev.path, fs_type)
    if fs_type != "ext4":  # ext4's floor is ours: mkfs.ext4 accepts 1 MiB (no journal)
        small = kit.device(smallest - MiB)
        with pytest.raises(CommandError):
            kit.fs.format(small.path, fs_type)


def test_format_does_not_discard_sparse_image(kit):
    dev = kit.device(SIZE["ext4"])
    kit.fs.format(dev.path, "ext4")
    # Lazy init and no discard: only a few MiB of metadata get allocated.
    assert os.stat(dev.backing_file).st_blocks * 512 < 16 * MiB


@pytest.mark.parametrize("kind", ["ext2", "ext3"])
def test_detect_older_ext(kit, kind):
    dev = kit.device(32 * MiB)
    run(["mke2fs", "-q", "-F", "-t", kind, dev.path])
    assert kit.fs.detect(dev.path) == kind


def test_detect_swap(kit):
    dev = kit.device(8 * MiB)
    run(["mkswap", dev.path])
    assert kit.fs.detect(dev.path) == "swap"


def test_detect_dos_partition_table(kit):
    dev = kit.device(8 * MiB)
    mbr = bytearray(512)
    # One Linux (0x83) partition from sector 2048 for 8192 sectors.
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 8192)
    mbr[510:512] = b"\x55\xaa"
    with open(dev.path, "r+b") as f:
        f.write(mbr)
    assert kit.fs.detect(dev.path) == "dos"


def test_detect_ambivalent_signatures(kit):
    dev = kit.device(SIZE["ext4"])
    kit.fs.format(dev.path, "ext4")
    with open(dev.path, "r+b") as f:
        f.seek(65536 + 64)
        f.write(b"_BHRfS_M")
    # Two filesystems' magic: never "blank", never one of them by accident.
    assert kit.fs.detect(dev.path) == "ambivalent"


def test_detect_plain_image_file(kit):
    image = kit.image(size=SIZE["ext4"])
    assert kit.fs.detect(image) is None


def test_detect_missing_device(kit):
    with pytest.raises(LinuxError):
        kit.fs.detect(kit.path("nope"))


def test_format_unsupported_and_bad_label(kit):
    dev = kit.device(8 * MiB)
    with pytest.raises(ValueError, match="unsupported"):
        kit.fs.format(dev.path, "ntfs")
    with pytest.raises(ValueError):
        kit.fs.format(dev.path, "xfs", label="x" * 13)
    with pytest.raises(ValueError):
        kit.fs.format(dev.path, "ext4", label="bad\nlabel")
    assert kit.fs.detect(dev.path) is None


def test_format_failure_is_command_error(kit):
    with pytest.raises(CommandError) as exc:
        kit.fs.format(kit.path("missing-device"), "ext4")
    assert exc.value.returncode not in (0, None)
    assert "mkfs.ext4" in str(exc.value)


def test_format_tool_missing(kit, monkeypatch):
    monkeypatch.setattr(exec_mod, "find_tool", lambda name: None)
    dev = kit.device(8 * MiB)
    with pytest.raises(ToolMissing) as exc:
        kit.fs.format(dev.path, "ext4")
    assert exc.value.tool == "mkfs.ext4"


def _grow_image_and_device(kit, dev, new_size):
    with open(dev.backing_file, "r+b") as f:
        f.truncate(new_size)
    kit.loops.refresh_capacity(dev.path)
    assert kit.fs.block_device_size(dev.path) == new_size


def has_capability(bit: int) -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


CAP_SYS_RESOURCE = 24


@pytest.mark.parametrize("fs_type", SUPPORTED_FS)
def test_grow_online(kit, fs_type):
    if fs_type == "ext4" and not has_capability(CAP_SYS_RESOURCE):
        # ext4's online resize ioctl (EXT4_IOC_RESIZE_FS) demands CAP_SYS_RESOURCE.
        pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this process lacks")
    size = SIZE[fs_type]
    dev = kit.device(size)
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, fs_type)
    before = kit.fs.statfs(mnt).total_bytes
    _grow_image_and_device(kit, dev, size * 2)
    kit.fs.grow(dev.path, mnt, fs_type)
    after = kit.fs.statfs(mnt).total_bytes
    assert after > before + size // 2
    kit.fs.grow(dev.path, mnt, fs_type)  # idempotent
    assert kit.fs.statfs(mnt).total_bytes == after
    kit.mounts.unmount(mnt)


def test_grow_ext4_online_without_cap_sys_resource_fails_clearly(kit):
    if has_capability(CAP_SYS_RESOURCE):
        pytest.skip("this process has CAP_SYS_RESOURCE")
    assert kit.fs.can_grow_online("ext4") is False
    dev = kit.device(SIZE["ext4"])
    kit.fs.format(dev.path, "ext4")
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, "ext4")
    kit.fs.grow(dev.path, mnt, "ext4")  # nothing to do: fine without the capability
    _grow_image_and_device(kit, dev, 2 * SIZE["ext4"])
    for mount_point in (mnt, None):  # resize2fs finds the mount either way
        with pytest.raises(GrowNotPermitted) as exc:
            kit.fs.grow(dev.path, mount_point, "ext4")
        err = exc.value
        assert isinstance(err, LinuxError) and not isinstance(err, CommandError)
        assert "CAP_SYS_RESOURCE" in str(err) and dev.path in str(err)
        assert err.device == dev.path and err.fs_type == "ext4"
        assert err.capability == "CAP_SYS_RESOURCE"
    assert kit.fs.needs_grow(dev.path, mnt, "ext4")
    kit.mounts.unmount(mnt)
    kit.fs.grow(dev.path, None, "ext4")  # offline needs no capability
    assert not kit.fs.needs_grow(dev.path, None, "ext4")


def test_can_grow_online(kit):
    assert kit.fs.can_grow_online("ext4") is has_capability(CAP_SYS_RESOURCE)
    assert kit.fs.can_grow_online("ext3") is has_capability(CAP_SYS_RESOURCE)
    assert kit.fs.can_grow_online("xfs") is True
    assert kit.fs.can_grow_online("btrfs") is True
    assert kit.fs.can_grow_online("vfat") is False


@pytest.mark.parametrize("fs_type", SUPPORTED_FS)
def test_needs_grow_and_statfs_size(kit, fs_type):
    size = SIZE[fs_type]
    dev = kit.device(size)
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, fs_type)
    assert 0 < kit.fs.statfs(mnt).total_bytes <= size
    assert kit.fs.needs_grow(dev.path, mnt, fs_type) is False
    _grow_image_and_device(kit, dev, 2 * size)
    assert kit.fs.needs_grow(dev.path, mnt, fs_type) is True
    assert kit.fs.needs_grow(dev.path, mnt, fs_type) is True  # read-only
    if kit.fs.can_grow_online(fs_type):
        kit.fs.grow(dev.path, mnt, fs_type)
    else:
        kit.mounts.unmount(mnt)
        kit.fs.grow(dev.path, None, fs_type)
        kit.mounts.mount(dev.path, mnt, fs_type)
    assert kit.fs.needs_grow(dev.path, mnt, fs_type) is False
    assert kit.fs.statfs(mnt).total_bytes > size
    kit.mounts.unmount(mnt)


# (growth in bytes, whether the grow tool uses it), in order, from SIZE bytes.
TAILS = {
    # 1 KiB blocks: resize2fs grows in whole pages (4 blocks); 8 MiB groups, and
    # block 0 is in none, so 4 more blocks complete the last group and start a new
    # one of 3 blocks. A new group needs room for its inode table (512 KiB) and
    # bitmaps plus 50 blocks, else resize2fs leaves it off; once there, it grows
    # in any (page) step.
    "ext4": [(1024, False), (3072, True), (256 * 1024, False), (MiB, True), (4096, True)],
    # 4 KiB blocks: a new allocation group under 64 blocks (256 KiB) is left off.
    "xfs": [(128 * 1024, False), (192 * 1024, True), (4096, True)],
    # Anything from one 4 KiB sector on.
    "btrfs": [(2048, False), (2048, True)],
}


def ext_block_count(device: str) -> int:
    out = run(["dumpe2fs", "-h", device]).stdout.decode()
    return int(re.search(r"^Block count:\s+(\d+)", out, re.M).group(1))


@pytest.mark.parametrize("fs_type", SUPPORTED_FS)
def test_needs_grow_knows_what_the_grow_tools_leave_unused(kit, fs_type):
    dev = kit.device(SIZE[fs_type])
    kit.fs.format(dev.path, fs_type)
    mnt = kit.dir("mnt")
    online = fs_type != "ext4"
    point = mnt if online else None

    def fs_size() -> int:
        return kit.fs.statfs(mnt).total_bytes if online else ext_block_count(dev.path)

    size = SIZE[fs_type]
    for growth, used in TAILS[fs_type]:
        size += growth
        _grow_image_and_device(kit, dev, size)
        if online:
            kit.mounts.mount(dev.path, mnt, fs_type)
        assert kit.fs.needs_grow(dev.path, point, fs_type) is used, growth
        before = fs_size()
        kit.fs.grow(dev.path, point, fs_type)
        assert (fs_size() > before) is used, growth
        assert kit.fs.needs_grow(dev.path, point, fs_type) is False, growth
        if online:
            kit.mounts.unmount(mnt)


def test_needs_grow_errors(kit):
    dev = kit.device(SIZE["ext4"])
    with pytest.raises(LinuxError, match="no ext2/3/4"):
        kit.fs.needs_grow(dev.path, None, "ext4")  # blank device
    with pytest.raises(ValueError, match="mounted"):
        kit.fs.needs_grow(dev.path, None, "xfs")
    with pytest.raises(ValueError):
        kit.fs.needs_grow(dev.path, "/x", "vfat")
    kit.fs.format(dev.path, "ext4")
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, "ext4")
    with pytest.raises(LinuxError):
        kit.fs.needs_grow(dev.path, mnt, "xfs")  # it is not an xfs
    with pytest.raises(LinuxError):
        kit.fs.needs_grow(kit.path("nope"), None, "ext4")
    kit.mounts.unmount(mnt)


def test_grow_ext4_offline(kit, monkeypatch):
    dev = kit.device(SIZE["ext4"])
    kit.fs.format(dev.path, "ext4")
    # Mounted since its last check: resize2fs then insists on "e2fsck -f" first,
    # which grow() runs for an unmounted filesystem.
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, "ext4")
    kit.mounts.unmount(mnt)
    run(["tune2fs", "-T", "20000101", dev.path])
    _grow_image_and_device(kit, dev, 2 * SIZE["ext4"])
    calls = []

    def recording_run(argv, **kw):
        calls.append(argv[0])
        return run(argv, **kw)

    monkeypatch.setattr(ext4_mod, "run", recording_run)
    kit.fs.grow(dev.path, None, "ext4")
    assert calls == ["resize2fs", "e2fsck", "resize2fs"]
    kit.mounts.mount(dev.path, mnt, "ext4")
    assert kit.fs.statfs(mnt).total_bytes > SIZE["ext4"] * 3 // 2
    kit.mounts.unmount(mnt)


@pytest.mark.parametrize("fs_type", ["xfs", "btrfs"])
def test_grow_needs_mount_point(kit, fs_type):
    with pytest.raises(ValueError, match="mount"):
        kit.fs.grow("/dev/loop999999", None, fs_type)


def test_grow_unsupported(kit):
    with pytest.raises(ValueError):
        kit.fs.grow("/dev/loop999999", "/x", "vfat")


def test_statfs_matches_statvfs(kit):
    dev = kit.device(SIZE["ext4"])
    kit.fs.format(dev.path, "ext4")
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, "ext4")
    before = kit.fs.statfs(mnt)
    with open(os.path.join(mnt, "data"), "wb") as f:
        f.write(os.urandom(4 * MiB))
        os.fsync(f.fileno())
    after = kit.fs.statfs(mnt)
    st = os.statvfs(mnt)
    assert after.total_bytes == st.f_blocks * st.f_frsize
    assert after.available_bytes == st.f_bavail * st.f_frsize
    assert after.used_bytes >= before.used_bytes + 4 * MiB
    assert after.used_inodes == before.used_inodes + 1
    assert after.total_inodes == after.free_inodes + after.used_inodes
    assert 0 < after.total_bytes <= SIZE["ext4"]
    kit.mounts.unmount(mnt)


def test_missing_tools(kit, monkeypatch):
    assert missing_tools() == []
    monkeypatch.setattr("csi_py.linux.exec.find_tool", lambda name: None)
    assert missing_tools() == list(TOOLS)


def test_block_device_size(kit):
    dev = kit.device(24 * MiB)
    assert kit.fs.block_device_size(dev.path) == 24 * MiB
    with pytest.raises(LinuxError):
        kit.fs.block_device_size(kit.path("nope"))

"""Mounter against real mounts (all under the test's tmp dir), and mountinfo parsing."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from csi_py.linux import _libc
from csi_py.linux import mount as mount_mod
from csi_py.linux.errors import DeviceBusy, MountError
from csi_py.linux.mount import (
    MS_NOATIME,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MountEntry,
    normalize,
    parse_mountinfo,
    parse_options,
)
from tests.kernel_leaks import entries_under
from tests.lifecycle import MiB

# ---- parsing (pure) --------------------------------------------------------------

SAMPLE = (
    "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "36 22 7:3 / /var/lib/kubelet/pods/a\\040b/vol\\011tab rw,nosuid,nodev - ext4 /dev/loop3 rw\n"
    "37 22 0:6 /loop3 /blk\\012nl\\134back rw master:4 shared:7 propagate_from:2 - devtmpfs "
    "devtmpfs rw,size=10k,mode=755\n"
    "38 22 0:45 / /srv/with\\040space rw - tmpfs my\\040src rw,size=1024k\n"
    "\n"
)


def test_parse_mountinfo_fields_and_escapes():
    entries = parse_mountinfo(SAMPLE)
    assert len(entries) == 4
    root, loop, blk, tmp = entries
    assert root == MountEntry(
        mount_id=22,
        parent_id=1,
        major=253,
        minor=1,
        root="/",
        mount_point="/",
        mount_options=("rw", "relatime"),
        fs_type="ext4",
        source="/dev/vda",
        super_options=("rw", "discard"),
        optional_fields=("shared:1",),
    )
    assert loop.mount_point == "/var/lib/kubelet/pods/a b/vol\ttab"
    assert loop.optional_fields == ()
    assert (loop.major, loop.minor, loop.source) == (7, 3, "/dev/loop3")
    assert blk.mount_point == "/blk\nnl\\back"
    assert blk.root == "/loop3"
    assert blk.optional_fields == ("master:4", "shared:7", "propagate_from:2")
    assert blk.fs_type == "devtmpfs"
    assert tmp.source == "my src" and tmp.mount_point == "/srv/with space"
    assert not tmp.read_only


def test_parse_mountinfo_read_only_and_non_utf8():
    raw = b"40 22 7:1 / /x\xff\\040y ro,relatime - xfs /dev/loop1 ro\n"
    (entry,) = parse_mountinfo(os.fsdecode(raw))
    assert entry.read_only
    assert os.fsencode(entry.mount_point) == b"/x\xff y"


@pytest.mark.parametrize(
    "line",
    ["garbage", "1 2 3:4 / /x rw shared:1 ext4 /dev/x rw", "a 2 3:4 / /x rw - ext4 /dev/x rw"],
)
def test_parse_mountinfo_malformed(line):
    with pytest.raises(ValueError, match="line 1"):
        parse_mountinfo(line + "\n")


def test_parse_options():
    flags, data = parse_options(["ro", "nosuid", "nodev", "noatime", "discard", "errors=panic"])
    assert flags == MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME
    assert data == "discard,errors=panic"
    # Later words win; userspace-only words vanish.
    flags, data = parse_options(["ro", "rw", "defaults", "nofail", "noatime", "relatime"])
    assert flags == MS_RELATIME and data == ""
    for bad in ("bind", "rbind", "remount", "shared", "", "a,b", "x\0"):
        with pytest.raises(ValueError):
            parse_options([bad])


def test_normalize():
    assert normalize("/a/b/../c/") == "/a/c"
    assert normalize("//a//b") == "/a/b"


# ---- real mounts -----------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture
def ext4dev(kit):
    dev = kit.device(64 * MiB)
    kit.fs.format(dev.path, "ext4")
    return dev


@integration
def test_mount_is_mounted_unmount(kit, ext4dev):
    mnt = kit.dir("mnt")
    assert not kit.mounts.is_mounted(mnt)
    kit.mounts.mount(ext4dev.path, mnt, "ext4", ["nosuid", "nodev", "noexec", "noatime"])
    assert kit.mounts.is_mounted(mnt)
    assert kit.mounts.is_mounted(mnt + "/")  # normalized
    (entry,) = kit.mounts.mounts_at(mnt)
    assert entry.fs_type == "ext4" and entry.source == ext4dev.path
    assert (entry.major, entry.minor) == (7, ext4dev.number)
    assert {"rw", "nosuid", "nodev", "noexec", "noatime"} <= set(entry.mount_options)
    kit.mounts.unmount(mnt)
    assert not kit.mounts.is_mounted(mnt)
    kit.mounts.unmount(mnt)  # idempotent: not a mount point
    kit.mounts.unmount(kit.path("does/not/exist"))  # idempotent: ENOENT


@integration
def test_mount_read_only(kit, ext4dev):
    mnt = kit.dir("mnt")
    kit.mounts.mount(ext4dev.path, mnt, "ext4", read_only=True)
    assert kit.mounts.mounts_at(mnt)[0].read_only
    with pytest.raises(OSError) as exc:
        open(os.path.join(mnt, "x"), "w")
    assert exc.value.errno == errno.EROFS
    kit.mounts.unmount(mnt)


@integration
def test_mount_path_with_spaces_and_tabs(kit, ext4dev):
    mnt = kit.dir("vol with space\tand tab")
    kit.mounts.mount(ext4dev.path, mnt, "ext4")
    (entry,) = kit.mounts.mounts_at(mnt)
    assert entry.mount_point == mnt
    kit.mounts.unmount(mnt)
    assert kit.mounts.mounts_at(mnt) == []


@integration
def test_mount_tmpfs_with_data_options(kit):
    mnt = kit.dir("t")
    kit.mounts.mount("csipy-test", mnt, "tmpfs", ["size=1m", "mode=0700", "nosuid"])
    (entry,) = kit.mounts.mounts_at(mnt)
    assert entry.source == "csipy-test"
    assert "size=1024k" in entry.super_options and "mode=700" in entry.super_options
    assert "nosuid" in entry.mount_options
    kit.mounts.unmount(mnt)


@integration
@pytest.mark.parametrize(
    "fs_type, options, err",
    [
        ("xfs", (), errno.EINVAL),  # wrong filesystem type
        ("ext4", ("no_such_option",), errno.EINVAL),
        ("nosuchfs", (), errno.ENODEV),
    ],
)
def test_mount_errors(kit, ext4dev, fs_type, options, err):
    mnt = kit.dir("mnt")
    with pytest.raises(MountError) as exc:
        kit.mounts.mount(ext4dev.path, mnt, fs_type, options)
    assert exc.value.errno == err
    assert exc.value.target == mnt and exc.value.source == ext4dev.path
    assert mnt in str(exc.value) and fs_type in str(exc.value)
    assert not kit.mounts.is_mounted(mnt)


@integration
def test_mount_missing_target_and_non_block_source(kit, ext4dev):
    with pytest.raises(MountError) as exc:
        kit.mounts.mount(ext4dev.path, kit.path("nope"), "ext4")
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(MountError) as exc:
        kit.mounts.mount(ext4dev.backing_file, kit.dir("mnt"), "ext4")
    assert exc.value.errno == errno.ENOTBLK


@integration
def test_stacked_mounts_unmount_top_first(kit):
    mnt = kit.dir("stack")
    kit.mounts.mount("lower", mnt, "tmpfs", ["size=1m"])
    kit.mounts.mount("upper", mnt, "tmpfs", ["size=1m"])
    assert [m.source for m in kit.mounts.mounts_at(mnt)] == ["lower", "upper"]
    kit.mounts.unmount(mnt)
    assert [m.source for m in kit.mounts.mounts_at(mnt)] == ["lower"]
    kit.mounts.unmount(mnt)
    assert kit.mounts.mounts_at(mnt) == []


@integration
def test_mounts_under_deepest_first(kit):
    top = kit.dir("top")
    kit.mounts.mount("a", top, "tmpfs", ["size=1m"])
    os.mkdir(os.path.join(top, "x"))
    kit.mounts.mount("b", os.path.join(top, "x"), "tmpfs", ["size=1m"])
    os.makedirs(os.path.join(top, "x/y"))
    kit.mounts.mount("c", os.path.join(top, "x/y"), "tmpfs", ["size=1m"])
    assert [m.source for m in entries_under(kit.mounts, top)] == ["c", "b", "a"]
    # A sibling whose name merely starts the same is not "under".
    kit.dir("top2")
    assert [m.source for m in entries_under(kit.mounts, kit.path("top2"))] == []
    for m in entries_under(kit.mounts, top):
        kit.mounts.unmount(m.mount_point)


@integration
def test_unmount_busy_open_file(kit):
    mnt = kit.dir("busy")
    kit.mounts.mount("busy", mnt, "tmpfs", ["size=1m"])
    f = open(os.path.join(mnt, "held"), "w")
    try:
        with pytest.raises(DeviceBusy) as exc:
            kit.mounts.unmount(mnt)
        assert mnt in str(exc.value)
        assert kit.mounts.is_mounted(mnt)
    finally:
        f.close()
    kit.mounts.unmount(mnt)


@integration
def test_unmount_busy_with_mount_beneath(kit):
    mnt = kit.dir("parent")
    kit.mounts.mount("p", mnt, "tmpfs", ["size=1m"])
    child = os.path.join(mnt, "child")
    os.mkdir(child)
    kit.mounts.mount("c", child, "tmpfs", ["size=1m"])
    with pytest.raises(DeviceBusy):
        kit.mounts.unmount(mnt)
    kit.mounts.unmount(child)
    kit.mounts.unmount(mnt)


@integration
def test_unmount_does_not_follow_symlinks(kit):
    mnt = kit.dir("real")
    kit.mounts.mount("s", mnt, "tmpfs", ["size=1m"])
    link = kit.path("link")
    os.symlink(mnt, link)
    kit.mounts.unmount(link)  # the symlink itself is not a mount point: no-op
    assert kit.mounts.is_mounted(mnt)
    kit.mounts.unmount(mnt)


# ---- bind mounts -----------------------------------------------------------------


@integration
def test_bind_read_only_is_really_read_only(kit, ext4dev):
    staging = kit.dir("staging")
    kit.mounts.mount(ext4dev.path, staging, "ext4")
    publish = kit.dir("publish")
    kit.mounts.bind_mount(staging, publish, read_only=True)
    (entry,) = kit.mounts.mounts_at(publish)
    assert entry.read_only and entry.source == ext4dev.path
    with pytest.raises(OSError) as exc:
        open(os.path.join(publish, "x"), "w")
    assert exc.value.errno == errno.EROFS
    # The staging mount itself stays writable.
    open(os.path.join(staging, "x"), "w").close()
    assert os.path.exists(os.path.join(publish, "x"))
    kit.mounts.unmount(publish)
    kit.mounts.unmount(staging)


@integration
def test_bind_of_subdirectory_reports_root(kit, ext4dev):
    staging = kit.dir("staging")
    kit.mounts.mount(ext4dev.path, staging, "ext4")
    os.mkdir(os.path.join(staging, "sub"))
    publish = kit.dir("publish")
    kit.mounts.bind_mount(os.path.join(staging, "sub"), publish)
    (entry,) = kit.mounts.mounts_at(publish)
    assert entry.root == "/sub" and not entry.read_only
    kit.mounts.unmount(publish)
    kit.mounts.unmount(staging)


@integration
def test_bind_keeps_inherited_flags_on_remount(kit):
    # The remount that applies nodev replaces all per-mount flags; the "ro" and
    # "nosuid" the bind inherited from its source must survive it.
    src = kit.dir("src")
    kit.mounts.mount("ro-src", src, "tmpfs", ["size=1m", "nosuid"], read_only=True)
    dst = kit.dir("dst")
    kit.mounts.bind_mount(src, dst, extra_flags=["nodev"])
    (entry,) = kit.mounts.mounts_at(dst)
    assert {"ro", "nosuid", "nodev"} <= set(entry.mount_options)
    kit.mounts.unmount(dst)
    kit.mounts.unmount(src)


@integration
def test_bind_extra_flags(kit):
    src = kit.dir("src")
    dst = kit.dir("dst")
    kit.mounts.bind_mount(src, dst, extra_flags=["nosuid", "nodev", "noexec"])
    (entry,) = kit.mounts.mounts_at(dst)
    assert {"rw", "nosuid", "nodev", "noexec"} <= set(entry.mount_options)
    kit.mounts.unmount(dst)
    with pytest.raises(ValueError):
        kit.mounts.bind_mount(src, dst, extra_flags=["size=1m"])
    assert not kit.mounts.is_mounted(dst)


@integration
def test_block_bind_of_device_node_onto_file(kit):
    dev = kit.device(4 * MiB)
    target = kit.file("pods/uid/volumeDevices/vol")
    kit.mounts.bind_mount(dev.path, target)
    (entry,) = kit.mounts.mounts_at(target)
    assert entry.fs_type == "devtmpfs" and entry.root == f"/loop{dev.number}"
    # The file now IS the device: writes through it land in the backing file.
    with open(target, "r+b") as f:
        f.seek(MiB)
        f.write(b"hello block")
        f.flush()
        os.fsync(f.fileno())
    with open(dev.backing_file, "rb") as f:
        f.seek(MiB)
        assert f.read(11) == b"hello block"
    kit.mounts.unmount(target)
    kit.mounts.unmount(target)  # idempotent


@integration
def test_block_bind_read_only_does_not_protect_the_device(kit):
    # Kernel fact the core must know: a read-only mount does not apply to device
    # nodes (the permission check for "read-only filesystem" covers regular files,
    # directories and symlinks only). A raw block volume published read-only must
    # use a read-only loop device instead; see the next test.
    dev = kit.device(4 * MiB)
    target = kit.file("blk")
    kit.mounts.bind_mount(dev.path, target, read_only=True)
    assert kit.mounts.mounts_at(target)[0].read_only
    with open(target, "r+b") as f:
        f.write(b"still writable")
    kit.mounts.unmount(target)


@integration
def test_block_bind_of_read_only_loop_device_refuses_writes(kit):
    dev = kit.device(4 * MiB, read_only=True)
    target = kit.file("blk")
    kit.mounts.bind_mount(dev.path, target, read_only=True)
    fd = os.open(target, os.O_WRONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, mmap.mmap(-1, 4096))
        assert exc.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    finally:
        os.close(fd)
    kit.mounts.unmount(target)


@integration
@pytest.mark.parametrize("kind", ["dir-on-file", "file-on-dir"])
def test_bind_type_mismatch(kit, kind):
    d, f = kit.dir("d"), kit.file("f")
    src, dst = (d, f) if kind == "dir-on-file" else (f, d)
    with pytest.raises(MountError) as exc:
        kit.mounts.bind_mount(src, dst)
    assert exc.value.errno == errno.ENOTDIR


@integration
def test_bind_missing_source(kit):
    with pytest.raises(MountError) as exc:
        kit.mounts.bind_mount(kit.path("missing"), kit.dir("dst"))
    assert exc.value.errno == errno.ENOENT


@integration
def test_bind_remount_failure_undoes_the_bind(kit, monkeypatch):
    src, dst = kit.dir("src"), kit.dir("dst")
    real_mount = _libc.mount

    def failing_remount(source, target, fs_type, flags, data):
        if flags & mount_mod.MS_REMOUNT:
            return errno.EPERM
        return real_mount(source, target, fs_type, flags, data)

    monkeypatch.setattr(mount_mod._libc, "mount", failing_remount)
    with pytest.raises(MountError) as exc:
        kit.mounts.bind_mount(src, dst, read_only=True)
    assert exc.value.errno == errno.EPERM
    assert not kit.mounts.is_mounted(dst)

"""One set of scenarios, run against the real kernel and against tests/fakes.py.

A fake that passes here behaves like the kernel in the ways the core relies on:
same return values, same idempotency, same error types (and errnos) in the same
situations. Add a scenario here whenever the core starts relying on a new
behaviour.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from csi_py.linux import Host
from csi_py.linux.errors import (
    DeviceBusy,
    FreezeError,
    GrowNotPermitted,
    LinuxError,
    LoopError,
    MountError,
)
from tests.conftest import has_cap_sys_resource
from tests.fakes import FakeHost, fake_host
from tests.kernel_leaks import entries_under
from tests.lifecycle import MiB
from tests.scratch import Scratch
from tests.write_probes import WriteProbes, thaw_and_finish


@dataclass
class Env(Scratch):
    host: Host
    root: Path
    real: bool
    writes: WriteProbes = field(default_factory=WriteProbes)

    def staged(self, fs_type: str = "ext4", size: int = 64 * MiB, name: str = "mnt"):
        """A fresh device with a ``fs_type`` filesystem mounted at root/<name>."""
        dev = self.host.loops.attach(self.image(f"{name}.img", size))
        self.host.fs.format(dev.path, fs_type)
        mnt = self.dir(name)
        self.host.mounts.mount(dev.path, mnt, fs_type)
        return dev, mnt

    def is_frozen(self, mnt: str) -> bool:
        """Real: a write under ``mnt`` stays blocked for half a second (it finishes at
        the thaw). Fake: the fake kernel says so."""
        if isinstance(self.host, FakeHost):
            return self._fake_frozen(mnt)
        return self.writes.blocked(mnt)

    def is_thawed(self, mnt: str) -> bool:
        """Real: a write under ``mnt`` finishes, and so has every write an earlier
        :meth:`is_frozen` left blocked (so ``mnt`` can be unmounted). Fake: the fake
        kernel says it is not frozen."""
        if isinstance(self.host, FakeHost):
            return not self._fake_frozen(mnt)
        return self.writes.go_through(mnt)

    def _fake_frozen(self, mnt: str) -> bool:
        kernel = self.host.kernel  # type: ignore[attr-defined]  # a FakeHost
        top = kernel.top_mount(mnt)
        return top is not None and top.source in kernel.frozen

    def record_fs_error(self, dev) -> None:
        """Make the kernel (or the fake) record an error on an ext4 of ``dev``."""
        if isinstance(self.host, FakeHost):
            self.host.fs.inject_error(dev.path, "1 error(s) recorded")  # type: ignore[attr-defined]
            return
        with open(f"/sys/fs/ext4/{os.path.basename(dev.path)}/trigger_fs_error", "w") as f:
            f.write("csi-py contract test")


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.integration), "fake"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "real":
        kit = request.getfixturevalue("kit")  # cleans up what a failing test left
        e = Env(host=Host(loops=kit.loops, mounts=kit.mounts, fs=kit.fs), root=tmp_path,
                real=True)  # fmt: skip
        yield e
        thaw_and_finish(kit, str(tmp_path), e.writes)
    else:
        yield Env(host=fake_host(), root=tmp_path, real=False)


def test_attach_list_find_get_detach(env):
    h = env.host
    image = env.image(size=8 * MiB)
    dev = h.loops.attach(image)
    assert dev.backing_file == image and dev.size_bytes == 8 * MiB
    assert dev.direct_io and not dev.read_only and not dev.backing_deleted
    # The backing file's identity, as the kernel holds it (LOOP_GET_STATUS64).
    st = os.stat(image)
    assert (dev.backing_dev, dev.backing_inode) == (st.st_dev, st.st_ino)
    assert dev in h.loops.list_attached()
    assert h.loops.find_by_backing_file(image) == [dev]
    assert h.loops.get(dev.path) == dev
    h.loops.detach(dev.path)
    assert h.loops.find_by_backing_file(image) == []
    h.loops.detach(dev.path)  # idempotent
    assert dev not in h.loops.list_attached()


def test_attached_to_and_held_open(env):
    """What DeleteVolume asks: nothing attached is a plain "no" (the real one answers
    from a lease on the file, without reading sysfs); an attached device, read-write
    or read-only, is named, and the file is held until the detach."""
    h = env.host
    image = env.image(size=MiB)
    assert h.loops.held_open(image) is False
    assert h.loops.attached_to(image) == []
    for read_only in (False, True):
        dev = h.loops.attach(image, read_only=read_only)
        assert h.loops.held_open(image) is True
        assert h.loops.attached_to(image) == [dev] == h.loops.find_by_backing_file(image)
        h.loops.detach(dev.path)
        assert h.loops.held_open(image) is False
        assert h.loops.attached_to(image) == []


def test_attach_missing_file(env):
    with pytest.raises(LoopError) as exc:
        env.host.loops.attach(str(env.root / "missing.img"))
    assert exc.value.errno == errno.ENOENT


def test_attach_read_only_and_buffered(env):
    dev = env.host.loops.attach(env.image(size=MiB), read_only=True, direct_io=False)
    assert dev.read_only and not dev.direct_io
    env.host.loops.detach(dev.path)


def test_deleted_backing_file(env):
    image = env.image(size=MiB)
    dev = env.host.loops.attach(image)
    os.unlink(image)
    now = env.host.loops.get(dev.path)
    assert now is not None and now.backing_deleted and now.backing_file == image
    env.host.loops.detach(dev.path)


def test_refresh_capacity(env):
    h = env.host
    dev = h.loops.attach(env.image(size=8 * MiB))
    with open(dev.backing_file, "r+b") as f:
        f.truncate(16 * MiB)
    assert h.fs.block_device_size(dev.path) == 8 * MiB
    h.loops.refresh_capacity(dev.path)
    assert h.fs.block_device_size(dev.path) == 16 * MiB
    assert h.loops.get(dev.path).size_bytes == 16 * MiB
    h.loops.detach(dev.path)
    with pytest.raises(LoopError):
        h.loops.refresh_capacity(dev.path)


def test_format_detect(env):
    h = env.host
    image = env.image()
    dev = h.loops.attach(image)
    assert h.fs.detect(dev.path) is None
    with pytest.raises(ValueError):
        h.fs.format(dev.path, "ntfs")
    h.fs.format(dev.path, "ext4")
    assert h.fs.detect(dev.path) == "ext4"
    # What was written survives detach and re-attach, as a superblock does.
    h.loops.detach(dev.path)
    dev = h.loops.attach(image)
    assert h.fs.detect(dev.path) == "ext4"
    h.loops.detach(dev.path)


def test_mount_is_mounted_unmount(env):
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    mnt = env.dir("staging")
    h.mounts.mount(dev.path, mnt, "ext4", ["noatime"])
    assert h.mounts.is_mounted(mnt)
    (entry,) = h.mounts.mounts_at(mnt)
    assert entry.fs_type == "ext4" and entry.source == dev.path and entry.root == "/"
    assert "noatime" in entry.mount_options and not entry.read_only
    assert entry in h.mounts.list_mounts()
    assert entries_under(h.mounts, str(env.root)) == [entry]
    h.mounts.unmount(mnt)
    assert not h.mounts.is_mounted(mnt)
    h.mounts.unmount(mnt)  # idempotent
    h.mounts.unmount(str(env.root / "never-existed"))
    h.loops.detach(dev.path)


def test_mount_errors(env):
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    mnt = env.dir("mnt")
    for fs_type, err in (("xfs", errno.EINVAL), ("nosuchfs", errno.ENODEV)):
        with pytest.raises(MountError) as exc:
            h.mounts.mount(dev.path, mnt, fs_type)
        assert exc.value.errno == err
    with pytest.raises(MountError) as exc:
        h.mounts.mount(dev.path, str(env.root / "nope"), "ext4")
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(ValueError):
        h.mounts.mount(dev.path, mnt, "ext4", ["bind"])
    assert not h.mounts.is_mounted(mnt)
    h.loops.detach(dev.path)


def test_read_only_device_needs_read_only_mount(env):
    h = env.host
    image = env.image()
    dev = h.loops.attach(image)
    h.fs.format(dev.path, "ext4")
    h.loops.detach(dev.path)
    ro = h.loops.attach(image, read_only=True)
    mnt = env.dir("mnt")
    with pytest.raises(MountError) as exc:
        h.mounts.mount(ro.path, mnt, "ext4")
    assert exc.value.errno in (errno.EACCES, errno.EROFS)
    h.mounts.mount(ro.path, mnt, "ext4", read_only=True)
    assert h.mounts.mounts_at(mnt)[0].read_only
    h.mounts.unmount(mnt)
    h.loops.detach(ro.path)


def test_bind_read_only(env):
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    staging, publish = env.dir("staging"), env.dir("publish")
    h.mounts.mount(dev.path, staging, "ext4")
    os.makedirs(os.path.join(staging, "sub"), exist_ok=True)
    h.mounts.bind_mount(staging, publish, read_only=True, extra_flags=["nosuid"])
    (entry,) = h.mounts.mounts_at(publish)
    assert entry.read_only and "nosuid" in entry.mount_options
    assert entry.source == dev.path and entry.fs_type == "ext4"
    assert not h.mounts.mounts_at(staging)[0].read_only
    if env.real:
        with pytest.raises(OSError) as exc:
            open(os.path.join(publish, "x"), "w")
        assert exc.value.errno == errno.EROFS
    # Binding from a read-only mount stays read-only without asking.
    again = env.dir("again")
    h.mounts.bind_mount(publish, again)
    assert h.mounts.mounts_at(again)[0].read_only
    with pytest.raises(ValueError):
        h.mounts.bind_mount(staging, again, extra_flags=["size=1m"])
    for target in (again, publish, staging):
        h.mounts.unmount(target)
    h.loops.detach(dev.path)


def test_block_bind_of_device_onto_file(env):
    h = env.host
    dev = h.loops.attach(env.image(size=MiB))
    target = env.file("blockvol")
    h.mounts.bind_mount(dev.path, target)
    (entry,) = h.mounts.mounts_at(target)
    assert entry.fs_type == "devtmpfs" and entry.root == "/" + os.path.basename(dev.path)
    with pytest.raises(MountError) as exc:
        h.mounts.bind_mount(dev.path, env.dir("adir"))
    assert exc.value.errno == errno.ENOTDIR
    # A bind-mounted node does not hold the device: detach works.
    h.loops.detach(dev.path)
    assert h.loops.find_by_backing_file(dev.backing_file) == []
    h.mounts.unmount(target)


def test_detach_mounted_device_is_busy(env):
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    mnt = env.dir("mnt")
    h.mounts.mount(dev.path, mnt, "ext4")
    with pytest.raises(DeviceBusy):
        h.loops.detach(dev.path)
    assert h.loops.get(dev.path) == dev
    # A bind of the filesystem keeps it busy after the first mount is gone.
    pub = env.dir("pub")
    h.mounts.bind_mount(mnt, pub)
    h.mounts.unmount(mnt)
    with pytest.raises(DeviceBusy):
        h.loops.detach(dev.path)
    h.mounts.unmount(pub)
    h.loops.detach(dev.path)
    assert h.loops.get(dev.path) is None


def test_unmount_with_mount_beneath_is_busy(env):
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    mnt = env.dir("mnt")
    h.mounts.mount(dev.path, mnt, "ext4")
    child = os.path.join(mnt, "child")
    os.makedirs(child, exist_ok=True)
    h.mounts.bind_mount(env.dir("other"), child)
    with pytest.raises(DeviceBusy):
        h.mounts.unmount(mnt)
    assert [m.mount_point for m in entries_under(h.mounts, mnt)] == [child, mnt]
    h.mounts.unmount(child)
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


def test_stacked_mounts(env):
    h = env.host
    lower = h.loops.attach(env.image("lower.img"))
    upper = h.loops.attach(env.image("upper.img"))
    h.fs.format(lower.path, "ext4")
    h.fs.format(upper.path, "ext4")
    mnt = env.dir("mnt")
    h.mounts.mount(lower.path, mnt, "ext4")
    # The same filesystem twice on the same mount point is refused (EBUSY), so
    # a repeated mount() cannot silently stack.
    with pytest.raises(MountError) as exc:
        h.mounts.mount(lower.path, mnt, "ext4", ["nosuid"])
    assert exc.value.errno == errno.EBUSY
    h.mounts.mount(upper.path, mnt, "ext4")
    assert [m.source for m in h.mounts.mounts_at(mnt)] == [lower.path, upper.path]
    h.mounts.unmount(mnt)
    assert [m.source for m in h.mounts.mounts_at(mnt)] == [lower.path]
    h.mounts.unmount(mnt)
    assert h.mounts.mounts_at(mnt) == []
    h.loops.detach(lower.path)
    h.loops.detach(upper.path)


def test_second_mount_of_a_device_cannot_change_read_only(env):
    # A filesystem (superblock) is read-only or not; a second mount of the same
    # device with the other setting is EBUSY. Read-only views of a read-write
    # filesystem come from bind_mount(read_only=True) instead.
    h = env.host
    dev = h.loops.attach(env.image())
    h.fs.format(dev.path, "ext4")
    first, second = env.dir("first"), env.dir("second")
    h.mounts.mount(dev.path, first, "ext4")
    with pytest.raises(MountError) as exc:
        h.mounts.mount(dev.path, second, "ext4", read_only=True)
    assert exc.value.errno == errno.EBUSY
    h.mounts.mount(dev.path, second, "ext4")  # same setting: shares the superblock
    assert h.mounts.is_mounted(second)
    h.mounts.unmount(second)
    h.mounts.unmount(first)
    h.loops.detach(dev.path)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_grow(env, fs_type):
    h = env.host
    size = 320 * MiB
    dev = h.loops.attach(env.image(size=size))
    h.fs.format(dev.path, fs_type)
    mnt = env.dir("mnt")
    h.mounts.mount(dev.path, mnt, fs_type)
    before = h.fs.statfs(mnt).total_bytes
    with open(dev.backing_file, "r+b") as f:
        f.truncate(2 * size)
    h.loops.refresh_capacity(dev.path)
    assert h.fs.statfs(mnt).total_bytes == before  # the filesystem has not grown yet
    with pytest.raises(ValueError):
        h.fs.grow(dev.path, None, "xfs")
    if fs_type == "xfs":
        h.fs.grow(dev.path, mnt, fs_type)
        assert h.fs.statfs(mnt).total_bytes > before + size // 2
    h.mounts.unmount(mnt)
    if fs_type == "ext4":
        h.fs.grow(dev.path, None, fs_type)  # offline: needs no CAP_SYS_RESOURCE
        h.mounts.mount(dev.path, mnt, fs_type)
        assert h.fs.statfs(mnt).total_bytes > before + size // 2
        h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


def test_block_device_sizes(env):
    h = env.host
    with pytest.raises(LinuxError):
        h.fs.block_device_size(str(env.root / "nope"))
    with pytest.raises(LinuxError):
        h.fs.detect(str(env.root / "nope"))


# ---- read-ahead, direct I/O, flush ----------------------------------------------------


def test_read_ahead(env):
    h = env.host
    dev = h.loops.attach(env.image(size=MiB))
    default = h.loops.get_read_ahead(dev.path)
    h.loops.set_read_ahead(dev.path, 256)
    assert h.loops.get_read_ahead(dev.path) == 256
    h.loops.set_read_ahead(dev.path, 6)
    assert h.loops.get_read_ahead(dev.path) == 4  # whole pages
    for bad in (-1, 65537, True):
        with pytest.raises(ValueError):
            h.loops.set_read_ahead(dev.path, bad)
    h.loops.set_read_ahead(dev.path, default)
    h.loops.detach(dev.path)
    for call in (lambda: h.loops.get_read_ahead(dev.path),
                 lambda: h.loops.set_read_ahead(dev.path, 128)):  # fmt: skip
        with pytest.raises(LoopError) as exc:
            call()
        assert exc.value.errno == errno.ENXIO


def test_get_sees_set_direct_io(env):
    h = env.host
    dev = h.loops.attach(env.image(size=MiB))
    h.loops.set_direct_io(dev.path, False)
    assert h.loops.get(dev.path).direct_io is False
    assert [d.direct_io for d in h.loops.find_by_backing_file(dev.backing_file)] == [False]
    h.loops.set_direct_io(dev.path, True)
    assert h.loops.get(dev.path).direct_io is True
    h.loops.detach(dev.path)


def test_flush(env):
    h = env.host
    dev = h.loops.attach(env.image(size=MiB))
    h.loops.flush(dev.path)
    h.loops.flush(dev.path)
    h.loops.detach(dev.path)
    with pytest.raises(LoopError) as exc:
        h.loops.flush(dev.path)
    assert exc.value.errno == errno.ENXIO
    # A read-only device flushes too (nothing to write back).
    ro = h.loops.attach(env.image("ro.img", size=MiB), read_only=True)
    h.loops.flush(ro.path)
    h.loops.detach(ro.path)


# ---- freeze / thaw ------------------------------------------------------------------


def test_freeze_thaw_idempotent(env):
    h = env.host
    dev, mnt = env.staged()
    h.fs.thaw(mnt)  # not frozen: fine
    h.fs.freeze(mnt)
    h.fs.freeze(mnt)  # already frozen: fine
    assert env.is_frozen(mnt)
    h.fs.thaw(mnt)
    h.fs.thaw(mnt)
    assert env.is_thawed(mnt)
    # Through a bind mount of it, too.
    pub = env.dir("pub")
    h.mounts.bind_mount(mnt, pub)
    h.fs.freeze(pub)
    assert env.is_frozen(mnt)
    h.fs.thaw(pub)
    assert env.is_thawed(mnt)
    h.mounts.unmount(pub)
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


def test_freeze_errors(env):
    h = env.host
    dev, mnt = env.staged()
    sub = os.path.join(mnt, "sub")
    os.makedirs(sub, exist_ok=True)
    link = env.path("link")
    os.symlink(mnt, link)
    for path, err in (
        (sub, errno.EINVAL),
        (env.dir("plain"), errno.EINVAL),
        (str(env.root / "missing"), errno.ENOENT),
        (env.file("f"), errno.ENOTDIR),
        (link, errno.ENOTDIR),  # O_DIRECTORY|O_NOFOLLOW on a symlink
    ):
        for op in (h.fs.freeze, h.fs.thaw):
            with pytest.raises(FreezeError) as exc:
                op(path)
            assert exc.value.errno == err, (path, op)
            assert path in str(exc.value)
    assert env.is_thawed(mnt)
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


def test_frozen_context(env):
    h = env.host
    first_dev, first = env.staged(name="first")
    second_dev, second = env.staged("xfs", 320 * MiB, name="second")
    with h.fs.frozen([first, second]):
        assert env.is_frozen(first) and env.is_frozen(second)
    assert env.is_thawed(first) and env.is_thawed(second)
    with pytest.raises(KeyError):
        with h.fs.frozen([first]):
            raise KeyError("body failed")
    assert env.is_thawed(first)
    # A later freeze fails: the earlier ones are thawed, the error is raised.
    with pytest.raises(FreezeError):
        with h.fs.frozen([first, second, env.dir("nomount")]):
            pytest.fail("the body must not run")
    assert env.is_thawed(first) and env.is_thawed(second)
    for mnt, dev in ((first, first_dev), (second, second_dev)):
        h.mounts.unmount(mnt)
        h.loops.detach(dev.path)


def test_frozen_filesystem_outlives_its_unmount(env):
    h = env.host
    dev, mnt = env.staged()
    h.fs.freeze(mnt)
    h.mounts.unmount(mnt)
    with pytest.raises(DeviceBusy):
        h.loops.detach(dev.path)
    h.mounts.mount(dev.path, mnt, "ext4")
    assert env.is_frozen(mnt)
    h.fs.thaw(mnt)
    assert env.writes.finished(10)
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


# ---- sizes and growing ----------------------------------------------------------------


def test_statfs_size_and_needs_grow(env):
    h = env.host
    dev, mnt = env.staged()
    assert 0 < h.fs.statfs(mnt).total_bytes <= 64 * MiB
    assert h.fs.needs_grow(dev.path, mnt, "ext4") is False
    assert h.fs.needs_grow(dev.path, None, "ext4") is False
    with open(dev.backing_file, "r+b") as f:
        f.truncate(128 * MiB)
    h.loops.refresh_capacity(dev.path)
    assert h.fs.needs_grow(dev.path, mnt, "ext4") is True
    with pytest.raises(ValueError):
        h.fs.needs_grow(dev.path, None, "xfs")
    with pytest.raises(ValueError):
        h.fs.needs_grow(dev.path, mnt, "vfat")
    with pytest.raises(LinuxError):
        h.fs.needs_grow(dev.path, mnt, "xfs")  # not an xfs
    h.mounts.unmount(mnt)
    h.fs.grow(dev.path, None, "ext4")
    assert h.fs.needs_grow(dev.path, None, "ext4") is False
    h.mounts.mount(dev.path, mnt, "ext4")
    assert h.fs.statfs(mnt).total_bytes > 64 * MiB
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


def test_online_ext4_grow_needs_the_capability(env):
    h = env.host
    if not env.real:
        h.fs.online_resize = has_cap_sys_resource()  # type: ignore[attr-defined]
    assert h.fs.can_grow_online("xfs") and h.fs.can_grow_online("btrfs")
    assert not h.fs.can_grow_online("vfat")
    dev, mnt = env.staged()
    h.fs.grow(dev.path, mnt, "ext4")  # nothing to grow: fine either way
    with open(dev.backing_file, "r+b") as f:
        f.truncate(128 * MiB)
    h.loops.refresh_capacity(dev.path)
    if h.fs.can_grow_online("ext4"):
        h.fs.grow(dev.path, mnt, "ext4")
        assert not h.fs.needs_grow(dev.path, mnt, "ext4")
    else:
        with pytest.raises(GrowNotPermitted) as exc:
            h.fs.grow(dev.path, mnt, "ext4")
        assert exc.value.device == dev.path and "CAP_SYS_RESOURCE" in str(exc.value)
        assert h.fs.needs_grow(dev.path, mnt, "ext4")
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)


# ---- health ---------------------------------------------------------------------------


def test_errors_healthy_then_recorded(env):
    h = env.host
    dev, mnt = env.staged()
    assert h.fs.errors(dev.path, mnt, "ext4") is None
    assert h.fs.errors(dev.path, None, "ext4") is None
    env.record_fs_error(dev)
    deadline = time.monotonic() + 10
    while (report := h.fs.errors(dev.path, mnt, "ext4")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report is not None
    assert report.startswith(f"ext4 on {dev.path} mounted at {mnt}: ")
    assert "1 error(s) recorded" in report
    h.mounts.unmount(mnt)
    report = h.fs.errors(dev.path, None, "ext4")
    assert report is not None and report.startswith(f"ext4 on {dev.path}: ")
    h.loops.detach(dev.path)


def test_errors_arguments(env):
    h = env.host
    dev, mnt = env.staged()
    for fs_type in ("xfs", "btrfs"):
        with pytest.raises(ValueError):
            h.fs.errors(dev.path, None, fs_type)
    with pytest.raises(ValueError):
        h.fs.errors(dev.path, mnt, "vfat")
    h.mounts.unmount(mnt)
    h.loops.detach(dev.path)
    blank = h.loops.attach(env.image("blank.img", size=MiB))
    with pytest.raises(LinuxError):
        h.fs.errors(blank.path, None, "ext4")
    h.loops.detach(blank.path)

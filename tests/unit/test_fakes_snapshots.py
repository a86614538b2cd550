"""The fakes' snapshot/expansion/health behaviour that the contract test cannot
reach: fault injection into freeze/thaw (partial failures of frozen()), injected
filesystem errors, the online-resize knob, action logs. No root needed."""

from __future__ import annotations

import errno
import os

import pytest

from csi_py.linux.errors import DeviceBusy, FreezeError, GrowNotPermitted, LinuxError
from tests.fakes import DEFAULT_READ_AHEAD_KIB, FakeAction, fake_host
from tests.lifecycle import MiB


@pytest.fixture
def host():
    return fake_host()


def staged(host, tmp_path, fs_type="ext4", name="staging"):
    image = tmp_path / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    dev = host.loops.attach(str(image))
    host.fs.format(dev.path, fs_type)
    mnt = tmp_path / name
    mnt.mkdir()
    host.mounts.mount(dev.path, str(mnt), fs_type)
    return dev, str(mnt)


def test_freeze_and_thaw_are_logged_once(host, tmp_path):
    dev, mnt = staged(host, tmp_path)
    host.fs.freeze(mnt)
    host.fs.freeze(mnt)
    assert host.kernel.frozen == {dev.path}
    host.fs.thaw(mnt)
    host.fs.thaw(mnt)
    assert host.kernel.frozen == set()
    assert [(a.op, a.target, a.source) for a in host.fs.actions[1:]] == [
        ("freeze", mnt, dev.path),
        ("thaw", mnt, dev.path),
    ]


def test_freeze_of_things_that_are_not_filesystem_mounts(host, tmp_path):
    dev, _ = staged(host, tmp_path)
    node = tmp_path / "blockvol"
    node.touch()
    host.mounts.bind_mount(dev.path, str(node))
    with pytest.raises(FreezeError) as exc:
        host.fs.freeze(str(node))
    assert exc.value.errno == errno.ENOTDIR
    plain, target = tmp_path / "plain", tmp_path / "target"
    plain.mkdir()
    target.mkdir()
    host.mounts.bind_mount(str(plain), str(target))  # a host directory: not freezable
    with pytest.raises(FreezeError) as exc:
        host.fs.freeze(str(target))
    assert exc.value.errno == errno.EOPNOTSUPP
    os.symlink(target, tmp_path / "link")
    with pytest.raises(FreezeError) as exc:
        host.fs.freeze(str(tmp_path / "link"))
    assert exc.value.errno == errno.ENOTDIR


def test_frozen_raises_when_the_first_freeze_fails(host, tmp_path):
    _, first = staged(host, tmp_path, name="first")
    host.fs.fail_next("freeze", FreezeError("injected", path=first, errno=errno.EIO))
    with pytest.raises(FreezeError, match="injected"):
        with host.fs.frozen([first]):
            pytest.fail("the body must not run")
    assert host.kernel.frozen == set()
    assert [a.op for a in host.fs.actions if a.op in ("freeze", "thaw")] == []


def test_frozen_thaws_earlier_ones_when_a_later_freeze_fails(host, tmp_path, monkeypatch):
    _, first = staged(host, tmp_path, name="first")
    _, second = staged(host, tmp_path, name="second")
    real_freeze = host.fs.freeze

    def freeze(mount_point):
        if mount_point == second:
            raise FreezeError("second failed", path=mount_point, errno=errno.EIO)
        real_freeze(mount_point)

    monkeypatch.setattr(host.fs, "freeze", freeze)
    with pytest.raises(FreezeError, match="second failed"):
        with host.fs.frozen([first, second]):
            pytest.fail("the body must not run")
    assert host.kernel.frozen == set()
    assert [(a.op, a.target) for a in host.fs.actions[2:]] == [("freeze", first), ("thaw", first)]


def test_frozen_keeps_thawing_when_a_thaw_fails(host, tmp_path):
    first_dev, first = staged(host, tmp_path, name="first")
    _, second = staged(host, tmp_path, name="second")
    host.fs.fail_next("thaw", FreezeError("thaw failed", path=second, errno=errno.EIO))
    with pytest.raises(FreezeError, match="thaw failed"):
        with host.fs.frozen([first, second]):
            pass
    # second (thawed first, in reverse order) failed; first was still thawed.
    assert host.kernel.frozen == {host.mounts.mounts_at(second)[0].source}
    assert first_dev.path not in host.kernel.frozen
    host.fs.thaw(second)


def test_frozen_adds_thaw_failures_to_the_body_error(host, tmp_path):
    _, mnt = staged(host, tmp_path)
    host.fs.fail_next("thaw", FreezeError("thaw failed", path=mnt, errno=errno.EIO))
    with pytest.raises(ValueError) as exc:
        with host.fs.frozen([mnt]):
            raise ValueError("snapshot failed")
    assert any("thaw failed" in note for note in exc.value.__notes__)


def test_frozen_device_stays_busy_after_unmount(host, tmp_path):
    dev, mnt = staged(host, tmp_path)
    host.fs.freeze(mnt)
    host.mounts.unmount(mnt)
    with pytest.raises(DeviceBusy, match="frozen"):
        host.loops.detach(dev.path)
    host.mounts.mount(dev.path, mnt, "ext4")
    host.fs.thaw(mnt)
    host.mounts.unmount(mnt)
    host.loops.detach(dev.path)


def test_injected_errors(host, tmp_path):
    dev, mnt = staged(host, tmp_path, "xfs")
    assert host.fs.errors(dev.path, mnt, "xfs") is None
    host.fs.inject_error(dev.path, "the filesystem has shut down")
    assert host.fs.errors(dev.path, mnt, "xfs") == (
        f"xfs on {dev.path} mounted at {mnt}: the filesystem has shut down"
    )
    with pytest.raises(LinuxError):
        host.fs.errors(dev.path, mnt, "btrfs")  # not what is there
    with pytest.raises(LinuxError):
        host.fs.errors(dev.path, str(tmp_path), "xfs")  # not mounted there
    host.fs.inject_error(dev.path, None)
    assert host.fs.errors(dev.path, mnt, "xfs") is None
    host.fs.fail_next("errors", LinuxError("boom"))
    with pytest.raises(LinuxError, match="boom"):
        host.fs.errors(dev.path, mnt, "xfs")


def test_online_resize_knob(host, tmp_path):
    host.fs.online_resize = False
    assert host.fs.can_grow_online("ext4") is False
    assert host.fs.can_grow_online("xfs") is True
    dev, mnt = staged(host, tmp_path)
    host.fs.grow(dev.path, mnt, "ext4")  # nothing to grow
    with open(dev.backing_file, "r+b") as f:
        f.truncate(128 * MiB)
    host.loops.refresh_capacity(dev.path)
    assert host.fs.needs_grow(dev.path, None, "ext4")
    with pytest.raises(GrowNotPermitted) as exc:
        host.fs.grow(dev.path, None, "ext4")  # mounted, whatever the argument says
    assert exc.value.fs_type == "ext4" and exc.value.capability == "CAP_SYS_RESOURCE"
    host.mounts.unmount(mnt)
    host.fs.grow(dev.path, None, "ext4")
    assert not host.fs.needs_grow(dev.path, None, "ext4")
    assert host.fs.statfs(str(tmp_path)).total_bytes > 0  # not a fake mount: the real fs


def test_read_ahead_and_flush_are_logged(host, tmp_path):
    image = tmp_path / "v.img"
    image.write_bytes(b"\0" * MiB)
    dev = host.loops.attach(str(image))
    assert host.loops.get_read_ahead(dev.path) == DEFAULT_READ_AHEAD_KIB
    host.loops.set_read_ahead(dev.path, 1023)
    assert host.loops.get_read_ahead(dev.path) == 1020
    host.loops.flush(dev.path)
    assert host.loops.actions[1:] == [
        FakeAction("set_read_ahead", dev.path, detail="1023"),
        FakeAction("flush", dev.path),
    ]

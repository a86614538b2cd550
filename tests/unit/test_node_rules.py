"""The node's decisions over a VolumeView (core/node_rules.py, linux/volume_view.py),
without root: views are built by hand from loop devices and mount table entries."""

from __future__ import annotations

import pytest

from csi_py.core import node_rules as rules
from csi_py.domain.errors import AlreadyExists, FailedPrecondition
from csi_py.domain.model import AccessMode, AccessType, Staging, StagingState
from csi_py.linux.loop import LoopDevice
from csi_py.linux.mount import MountEntry, MountTable
from csi_py.linux.volume_view import VolumeView, device_named_by, mount_is_of

IMAGE = "/pool/volumes/vol-1.img"
STAGE = "/var/lib/kubelet/staging/vol-1"
TARGET = "/var/lib/kubelet/pods/p/vol-1"


def loop(number: int, *, read_only: bool = False, deleted: bool = False) -> LoopDevice:
    return LoopDevice(f"/dev/loop{number}", number, IMAGE, deleted, 1 << 20, True, read_only)


def fs_mount(point: str, device: str, *, mount_id: int = 1, ro: bool = False) -> MountEntry:
    """A filesystem on `device` (or a bind of it: same source) at `point`."""
    return MountEntry(mount_id, 0, 7, 0, "/", point, ("ro" if ro else "rw",), "ext4",
                      device, ("rw",))


def block_mount(point: str, number: int, *, mount_id: int = 1, ro: bool = False) -> MountEntry:
    """The device node /dev/loopN bound onto a file (a published block volume)."""
    return MountEntry(mount_id, 0, 0, 5, f"/loop{number}", point, ("ro" if ro else "rw",),
                      "devtmpfs", "udev", ("rw",))


def other(point: str, *, mount_id: int = 9) -> MountEntry:
    return MountEntry(mount_id, 0, 0, 40, "/", point, ("rw",), "tmpfs", "tmpfs", ("rw",))


def view(devices: list[LoopDevice], mounts: list[MountEntry], lost: str = "") -> VolumeView:
    return VolumeView(IMAGE, tuple(devices), lost, MountTable.of_entries(mounts))


def staging(kind: AccessType, device: str = "/dev/loop1",
            state: StagingState = StagingState.STAGED) -> Staging:
    return Staging("vol-1", STAGE, kind, "ext4" if kind is AccessType.MOUNT else "", (),
                   False, device, state)


def test_mounts_are_matched_by_source_and_by_devtmpfs_root():
    assert mount_is_of(fs_mount("/x", "/dev/loop1"), "/dev/loop1")
    assert mount_is_of(block_mount("/x", 1), "/dev/loop1")
    assert not mount_is_of(block_mount("/x", 11), "/dev/loop1")
    assert not mount_is_of(other("/x"), "/dev/loop1")
    assert device_named_by(block_mount("/x", 4)) == "/dev/loop4"
    assert device_named_by(fs_mount("/x", "/dev/loop2")) == "/dev/loop2"
    assert device_named_by(other("/x")) == ""


def test_the_staged_device_is_the_writable_one():
    v = view([loop(7, read_only=True), loop(3)], [])
    assert v.staged is not None and v.staged.path == "/dev/loop3"
    with pytest.raises(FailedPrecondition, match="loop device is gone"):
        rules.staged_device(view([loop(3, deleted=True)], []), "vol-1")


def test_publish_of_a_filesystem_needs_its_staging_mount():
    dev = loop(1)
    with pytest.raises(FailedPrecondition, match="is not mounted"):
        rules.check_publish(view([dev], []), "vol-1", dev, STAGE, TARGET, AccessType.MOUNT,
                            AccessMode.SINGLE_NODE_WRITER, False)
    staged = view([dev], [fs_mount(STAGE, dev.path)])
    assert rules.check_publish(staged, "vol-1", dev, STAGE, TARGET, AccessType.MOUNT,
                               AccessMode.SINGLE_NODE_WRITER, False) is False


def test_publish_again_is_done_and_another_setting_is_already_exists():
    dev = loop(1)
    v = view([dev], [fs_mount(STAGE, dev.path), fs_mount(TARGET, dev.path, mount_id=2)])
    args = ("vol-1", dev, STAGE, TARGET, AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER)
    assert rules.check_publish(v, *args, False) is True
    with pytest.raises(AlreadyExists, match="readonly=False"):
        rules.check_publish(v, *args, True)
    taken = view([dev], [fs_mount(STAGE, dev.path), other(TARGET)])
    with pytest.raises(AlreadyExists, match="is not volume vol-1"):
        rules.check_publish(taken, *args, False)


def test_a_block_publish_through_a_read_only_extra_counts_as_published():
    dev, extra = loop(1), loop(2, read_only=True)
    v = view([dev, extra], [block_mount(TARGET, 2, ro=True)])
    assert rules.check_publish(v, "vol-1", dev, STAGE, TARGET, AccessType.BLOCK,
                               AccessMode.SINGLE_NODE_READER_ONLY, True) is True


def test_single_writer_refuses_a_second_target_but_multi_writer_does_not():
    dev = loop(1)
    v = view([dev], [block_mount("/elsewhere", 1)])
    with pytest.raises(FailedPrecondition, match="already published at /elsewhere"):
        rules.check_publish(v, "vol-1", dev, STAGE, TARGET, AccessType.BLOCK,
                            AccessMode.SINGLE_NODE_SINGLE_WRITER, False)
    assert rules.check_publish(v, "vol-1", dev, STAGE, TARGET, AccessType.BLOCK,
                               AccessMode.SINGLE_NODE_MULTI_WRITER, False) is False


def test_unpublish_takes_down_only_this_volumes_mounts_on_top():
    dev = loop(1)
    record = staging(AccessType.MOUNT)
    stacked = view([dev], [other(TARGET), fs_mount(TARGET, dev.path, mount_id=2),
                           fs_mount(TARGET, dev.path, mount_id=3)])
    assert rules.plan_unpublish(stacked, TARGET, record) == rules.UnpublishPlan(2, "", True)
    covered = view([dev], [fs_mount(TARGET, dev.path), other(TARGET)])
    assert rules.plan_unpublish(covered, TARGET, record) == rules.UnpublishPlan(0, "", True)
    assert rules.plan_unpublish(view([dev], []), TARGET, record) == \
        rules.UnpublishPlan(0, "", False)


def test_unpublish_detaches_the_read_only_extra_but_never_the_staged_device():
    dev, extra = loop(1), loop(2, read_only=True)
    record = staging(AccessType.BLOCK)
    v = view([dev, extra], [block_mount(TARGET, 2, ro=True)])
    assert rules.plan_unpublish(v, TARGET, record) == rules.UnpublishPlan(1, "/dev/loop2", False)
    staged_ro = staging(AccessType.BLOCK, device="/dev/loop2")
    assert rules.plan_unpublish(view([extra], [block_mount(TARGET, 2)]), TARGET, staged_ro) == \
        rules.UnpublishPlan(1, "", False)


def test_unpublish_takes_down_the_mount_of_a_device_detached_behind_our_back():
    record = staging(AccessType.BLOCK, device="/dev/loop5")
    v = view([], [block_mount(TARGET, 5)], lost="/dev/loop5")
    assert rules.plan_unpublish(v, TARGET, record) == rules.UnpublishPlan(1, "", False)
    unstaged = staging(AccessType.BLOCK, device="/dev/loop5", state=StagingState.STAGING)
    assert rules.plan_unpublish(v, TARGET, unstaged) == rules.UnpublishPlan(0, "", True)


def test_unstage_refuses_while_published_and_lists_every_device():
    dev, extra = loop(1), loop(2, read_only=True)
    published = view([dev, extra], [fs_mount(STAGE, dev.path),
                                    block_mount(TARGET, 2, mount_id=2)])
    with pytest.raises(FailedPrecondition, match=f"still published at {TARGET}"):
        rules.plan_unstage(published, "vol-1", STAGE)
    done = view([dev, extra], [fs_mount(STAGE, dev.path)])
    assert rules.plan_unstage(done, "vol-1", STAGE) == rules.UnstagePlan(1, (dev, extra))


def test_a_finished_staging_elsewhere_or_with_another_capability_is_refused():
    done = staging(AccessType.MOUNT)
    elsewhere = Staging("vol-1", "/other", AccessType.MOUNT, "ext4", (), False, "",
                        StagingState.STAGING)
    with pytest.raises(FailedPrecondition, match="already staged at"):
        rules.check_compatible_staging(done, elsewhere)
    block = Staging("vol-1", STAGE, AccessType.BLOCK, "", (), False, "", StagingState.STAGING)
    with pytest.raises(AlreadyExists, match="another capability"):
        rules.check_compatible_staging(done, block)
    rules.check_compatible_staging(staging(AccessType.MOUNT, state=StagingState.STAGING), block)


def _no_scan(*_args: object) -> list[LoopDevice]:
    raise AssertionError("scanned every loop device")


def test_the_kernel_view_reads_recorded_devices_and_scans_only_when_one_fails(tmp_path):
    from csi_py.linux.volume_view import VolumeKernel
    from tests.fakes import fake_host

    image = tmp_path / "vol-1.img"
    image.write_bytes(b"\0" * 4096)
    host = fake_host()
    staged = host.loops.attach(str(image))
    extra = host.loops.attach(str(image), read_only=True)
    kernel = VolumeKernel(host.loops, host.mounts)
    kernel.remember(str(image), extra.path)
    scan = host.loops.find_by_backing_file
    host.loops.find_by_backing_file = _no_scan  # type: ignore[method-assign]
    seen = kernel.view(str(image), staged.path)
    assert [d.path for d in seen.devices] == [staged.path, extra.path] and seen.lost == ""
    # A remembered extra that no longer backs the image is forgotten, not trusted.
    host.loops.detach(extra.path)
    assert [d.path for d in kernel.view(str(image), staged.path).devices] == [staged.path]
    assert kernel.extras(str(image)) == []
    # A recorded device that fails its check: the fallback scan finds the real one.
    host.loops.find_by_backing_file = scan  # type: ignore[method-assign]
    moved = kernel.view(str(image), "/dev/fakeloop9")
    assert moved.lost == "/dev/fakeloop9" and [d.path for d in moved.devices] == [staged.path]


MOUNTINFO = "\n".join([
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
    f"40 22 7:1 / {STAGE} rw,nosuid,nodev - ext4 /dev/loop1 rw",
    f"41 22 7:1 / {TARGET} rw - ext4 /dev/loop1 rw",
    f"42 22 7:11 / {TARGET} ro - ext4 /dev/loop11 rw",
    "43 22 0:5 /loop1 /pods/p/block rw - devtmpfs udev rw",
    "44 22 0:40 / /with\\040space rw - tmpfs tmpfs rw",
]) + "\n"


def test_the_mount_table_parses_only_the_lines_asked_for():
    table = MountTable(MOUNTINFO)
    assert [m.mount_id for m in table.at(TARGET)] == [41, 42]
    assert [m.mount_id for m in table.at(TARGET + "/")] == [41, 42]
    assert table.at("/nowhere") == [] and table.at("/with space")[0].mount_id == 44
    assert [m.mount_id for m in table.naming(["loop1"])] == [40, 41, 42, 43]  # a superset
    assert table.naming([]) == []
    assert [m.mount_id for m in table.all()] == [22, 40, 41, 42, 43, 44]
    dev = loop(1)
    v = VolumeView(IMAGE, (dev,), "", table)
    assert [m.mount_point for m in v.users(STAGE)] == [TARGET, "/pods/p/block"]
    assert v.ours_on_top(TARGET) == 0  # loop11 is on top: not this volume's

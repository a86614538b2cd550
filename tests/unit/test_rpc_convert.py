"""rpc/convert.py: CSI messages to domain types and back, field by field, and the
clear InvalidArgument for a capability the spec says is incomplete."""

from __future__ import annotations

import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.errors import InvalidArgument
from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Capability,
    CapacityRange,
    GroupSnapshot,
    Provisioning,
    Snapshot,
    SnapshotState,
    Volume,
    VolumeState,
)
from csi_py.rpc import convert

Mode = pb.VolumeCapability.AccessMode.Mode


def mount_cap(mode: int = Mode.SINGLE_NODE_WRITER, **mount) -> pb.VolumeCapability:
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(**mount),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def test_a_mount_capability_keeps_every_field():
    cap = convert.capability(mount_cap(Mode.SINGLE_NODE_MULTI_WRITER, fs_type="xfs",
                                       mount_flags=["noatime", "nodiscard"],
                                       volume_mount_group="2000"))
    assert cap == Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_MULTI_WRITER,
                             fs_type="xfs", mount_flags=("noatime", "nodiscard"),
                             volume_mount_group="2000")


def test_a_block_capability_has_no_filesystem():
    msg = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                              access_mode=pb.VolumeCapability.AccessMode(
                                  mode=Mode.SINGLE_NODE_READER_ONLY))
    cap = convert.capability(msg)
    assert (cap.access_type, cap.access_mode, cap.fs_type, cap.mount_flags) == \
        (AccessType.BLOCK, AccessMode.SINGLE_NODE_READER_ONLY, "", ())


def test_every_mode_the_proto_knows_converts_by_name():
    for name, number in Mode.items():
        if name == "UNKNOWN":
            continue
        assert convert.capability(mount_cap(number)).access_mode is AccessMode(name)


@pytest.mark.parametrize(("msg", "says"), [
    (pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(
        mode=Mode.SINGLE_NODE_WRITER)), "access_type"),
    (pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume()), "access_mode"),
    (mount_cap(Mode.UNKNOWN), "access_mode"),
    (mount_cap(99), "access mode number 99 is unknown"),
])
def test_an_incomplete_capability_is_invalid_argument_naming_the_field(msg, says):
    with pytest.raises(InvalidArgument, match=says):
        convert.capability(msg)


def test_optional_capability_and_lists():
    request = pb.ControllerExpandVolumeRequest(volume_id="v")
    assert convert.optional_capability(request) is None
    request.volume_capability.CopyFrom(mount_cap(fs_type="ext4"))
    assert convert.optional_capability(request).fs_type == "ext4"
    assert [c.fs_type for c in convert.capabilities([mount_cap(fs_type="btrfs"),
                                                     mount_cap()])] == ["btrfs", ""]


def test_capacity_range_is_copied_and_absent_means_zero():
    assert convert.capacity_range(pb.CapacityRange(required_bytes=5, limit_bytes=9)) == \
        CapacityRange(5, 9)
    assert convert.capacity_range(pb.CreateVolumeRequest().capacity_range) == \
        CapacityRange(0, 0)


def test_a_volume_carries_its_context_and_its_node_topology():
    vol = Volume(id="vol-1", name="pvc-1", capacity_bytes=64 << 20, fs_type="",
                 provisioning=Provisioning.THICK, parameters=(), state=VolumeState.READY,
                 created_at=1.0)
    msg = convert.volume(vol, "topology.csi-py/node", "node-a")
    assert (msg.volume_id, msg.capacity_bytes) == ("vol-1", 64 << 20)
    assert dict(msg.volume_context) == {"fsType": "", "provisioning": "thick", "name": "pvc-1"}
    assert [dict(t.segments) for t in msg.accessible_topology] == \
        [{"topology.csi-py/node": "node-a"}]


def test_timestamps_keep_sub_second_precision():
    ts = convert.timestamp(1700000000.25)
    # A float of this size holds about a quarter microsecond of precision.
    assert ts.seconds == 1700000000 and abs(ts.nanos - 250_000_000) < 1000


def snap(sid: str, state: SnapshotState = SnapshotState.READY, group: str = "") -> Snapshot:
    return Snapshot(id=sid, name=sid, source_volume_id="vol-1", size_bytes=1 << 20,
                    created_at=2.5, state=state, fs_type="ext4", group_id=group)


def test_a_snapshot_says_where_it_is_usable_and_whether_it_is_ready():
    msg = convert.snapshot(snap("snap-1", group="group-1"), {"k": "node-a"})
    assert (msg.snapshot_id, msg.source_volume_id, msg.size_bytes, msg.ready_to_use,
            msg.group_snapshot_id) == ("snap-1", "vol-1", 1 << 20, True, "group-1")
    assert msg.creation_time.ToNanoseconds() == 2_500_000_000
    assert [dict(t.segments) for t in msg.accessible_topology] == [{"k": "node-a"}]
    assert list(convert.snapshot(snap("snap-2", SnapshotState.CREATING)).accessible_topology) \
        == []
    assert convert.snapshot(snap("snap-2", SnapshotState.CREATING)).ready_to_use is False


def test_a_group_is_ready_only_when_it_has_members_and_all_are_ready():
    group = GroupSnapshot("group-1", "g", 3.0, SnapshotState.READY, ("snap-1", "snap-2"))
    ready = convert.group_snapshot(group, [snap("snap-1"), snap("snap-2")])
    assert ready.ready_to_use is True
    assert [s.snapshot_id for s in ready.snapshots] == ["snap-1", "snap-2"]
    assert convert.group_snapshot(group, [snap("snap-1"),
                                          snap("snap-2", SnapshotState.CREATING)]
                                  ).ready_to_use is False
    assert convert.group_snapshot(group, []).ready_to_use is False

"""Protobuf <-> domain types. Pure functions; InvalidArgument for unusable input."""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.errors import InvalidArgument
from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Capability,
    CapacityRange,
    GroupSnapshot,
    Snapshot,
    Volume,
)

_MODE_BY_NUMBER = {
    number: AccessMode(name)
    for name, number in pb.VolumeCapability.AccessMode.Mode.items()
    if name in AccessMode.__members__
}


def capability(cap: pb.VolumeCapability) -> Capability:
    """A VolumeCapability message as a Capability. Raises InvalidArgument when the
    access type or mode is missing."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgument("volume_capability needs an access_type (mount or block)")
    if not cap.HasField("access_mode") or cap.access_mode.mode == 0:
        raise InvalidArgument("volume_capability needs an access_mode")
    mode = _MODE_BY_NUMBER.get(cap.access_mode.mode)
    if mode is None:
        raise InvalidArgument(f"access mode number {cap.access_mode.mode} is unknown")
    if kind == "block":
        return Capability(AccessType.BLOCK, mode)
    return Capability(
        AccessType.MOUNT,
        mode,
        fs_type=cap.mount.fs_type,
        mount_flags=tuple(cap.mount.mount_flags),
        volume_mount_group=cap.mount.volume_mount_group,
    )


def capabilities(caps: list[pb.VolumeCapability]) -> list[Capability]:
    return [capability(c) for c in caps]


def optional_capability(msg: Message, field: str = "volume_capability") -> Capability | None:
    return capability(getattr(msg, field)) if msg.HasField(field) else None


def capacity_range(msg: pb.CapacityRange) -> CapacityRange:
    return CapacityRange(required_bytes=msg.required_bytes, limit_bytes=msg.limit_bytes)


def volume(vol: Volume, topology_key: str, node_id: str) -> pb.Volume:
    return pb.Volume(
        volume_id=vol.id,
        capacity_bytes=vol.capacity_bytes,
        # fsType is "" for a raw block volume; name is for people (csi-py volume list).
        volume_context={"fsType": vol.fs_type, "provisioning": vol.provisioning.value,
                        "name": vol.name},
        accessible_topology=[pb.Topology(segments={topology_key: node_id})],
    )


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def snapshot(snap: Snapshot, here: dict[str, str] | None = None) -> pb.Snapshot:
    """``here``: the node's topology segments; a snapshot is usable only there."""
    return pb.Snapshot(
        accessible_topology=[pb.Topology(segments=here)] if here else [],
        size_bytes=snap.size_bytes,
        snapshot_id=snap.id,
        source_volume_id=snap.source_volume_id,
        creation_time=timestamp(snap.created_at),
        ready_to_use=snap.ready,
        group_snapshot_id=snap.group_id,
    )


def group_snapshot(group: GroupSnapshot, members: list[Snapshot],
                   here: dict[str, str] | None = None) -> pb.VolumeGroupSnapshot:
    return pb.VolumeGroupSnapshot(
        group_snapshot_id=group.id,
        snapshots=[snapshot(s, here) for s in members],
        creation_time=timestamp(group.created_at),
        ready_to_use=all(s.ready for s in members) and bool(members),
    )

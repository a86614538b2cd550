"""One lifecycle helper for every suite (unit, integration, conformance, reliability,
security): the CSI requests of a volume's life, built from their arguments only (so a
retry sends exactly the same request), and a node session that undoes what it set up.

The sizes and capabilities the suites share are here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.model import AccessMode, AccessType, Capability
from csi_py.domain.units import GiB, KiB, MiB
from csi_py.rpc.client import block_capability, mount_capability
from tests.conftest import NODE_ID

__all__ = ["BLOCK", "CORE_BLOCK", "CORE_EXT4", "EXT4", "GiB", "KiB", "MiB", "NodeSession",
           "Volumes", "capability", "create_request", "node_session", "publish_request"]

EXT4 = mount_capability("ext4")
BLOCK = block_capability()
# The same two as the core's own Capability, for tests that call the core directly.
CORE_EXT4 = Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, fs_type="ext4")
CORE_BLOCK = Capability(AccessType.BLOCK, AccessMode.SINGLE_NODE_WRITER)
# A capability by kind ("block", "ext4", "xfs", "btrfs"), or a capability message.
Kind = str | pb.VolumeCapability


def capability(kind: Kind) -> pb.VolumeCapability:
    """The capability for a kind ("block", or a filesystem type), or the one given."""
    if isinstance(kind, pb.VolumeCapability):
        return kind
    return BLOCK if kind == "block" else mount_capability(kind)


def create_request(name: str, kind: Kind, size: int = 32 * MiB, snapshot_id: str = "",
                   volume_id: str = "", params: dict[str, str] | None = None
                   ) -> pb.CreateVolumeRequest:
    """A CreateVolumeRequest of one capability, optionally from a snapshot or a volume."""
    request = pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=[capability(kind)], parameters=params or {},
    )
    if snapshot_id:
        request.volume_content_source.snapshot.snapshot_id = snapshot_id
    if volume_id:
        request.volume_content_source.volume.volume_id = volume_id
    return request


class Volumes:
    """The calls kubelet and the sidecars make, for one client. Requests are built from
    their arguments only, so a retry sends exactly the same request."""

    def __init__(self, client: Any, timeout: float = 120.0) -> None:
        """`client`: an rpc Client, or a function returning the current one (a driver
        that restarts gets a new client)."""
        self._client = client
        self.t = timeout

    @property
    def c(self) -> Any:
        return self._client() if callable(self._client) else self._client

    def create(self, name: str, kind: Kind, size: int = 32 * MiB, **kw: Any) -> pb.Volume:
        return self.c.controller.CreateVolume(create_request(name, kind, size, **kw),
                                              timeout=self.t).volume

    def delete(self, vid: str) -> None:
        self.c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), timeout=self.t)

    def attach(self, vid: str, kind: Kind) -> dict[str, str]:
        return dict(self.c.controller.ControllerPublishVolume(
            pb.ControllerPublishVolumeRequest(volume_id=vid, node_id=NODE_ID,
                                              volume_capability=capability(kind)),
            timeout=self.t).publish_context)

    def detach(self, vid: str) -> None:
        self.c.controller.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE_ID), timeout=self.t)

    def stage(self, vid: str, kind: Kind, staging: str, ctx: dict[str, str] | None = None) -> None:
        self.c.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging,
                                      volume_capability=capability(kind),
                                      publish_context={"node": NODE_ID} if ctx is None else ctx),
            timeout=self.t)

    def unstage(self, vid: str, staging: str) -> None:
        self.c.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging),
            timeout=self.t)

    def publish(self, vid: str, kind: Kind, staging: str, target: str,
                readonly: bool = False, ctx: dict[str, str] | None = None) -> None:
        self.c.node.NodePublishVolume(publish_request(vid, staging, target, kind, readonly, ctx),
                                      timeout=self.t)

    def unpublish(self, vid: str, target: str) -> None:
        self.c.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target), timeout=self.t)

    def bring_up(self, vid: str, kind: Kind, staging: str, target: str) -> None:
        """ControllerPublish, NodeStage and NodePublish, as a CO brings a volume to a pod
        on this node."""
        self.attach(vid, kind)
        self.stage(vid, kind, staging)
        self.publish(vid, kind, staging, target)

    def take_down(self, vid: str, staging: str, target: str) -> None:
        """NodeUnpublish, NodeUnstage and ControllerUnpublish: bring_up undone, in the
        order a CO undoes it."""
        self.unpublish(vid, target)
        self.unstage(vid, staging)
        self.detach(vid)

    def expand(self, vid: str, kind: Kind, size: int) -> pb.ControllerExpandVolumeResponse:
        return self.c.controller.ControllerExpandVolume(
            pb.ControllerExpandVolumeRequest(volume_id=vid,
                                             capacity_range=pb.CapacityRange(required_bytes=size),
                                             volume_capability=capability(kind)),
            timeout=self.t)

    def node_expand(self, vid: str, kind: Kind, path: str, staging: str, size: int) -> int:
        return self.c.node.NodeExpandVolume(
            pb.NodeExpandVolumeRequest(volume_id=vid, volume_path=path,
                                       staging_target_path=staging,
                                       capacity_range=pb.CapacityRange(required_bytes=size),
                                       volume_capability=capability(kind)),
            timeout=self.t).capacity_bytes

    def snapshot(self, vid: str, name: str) -> pb.Snapshot:
        return self.c.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(source_volume_id=vid, name=name), timeout=self.t).snapshot

    def delete_snapshot(self, sid: str) -> None:
        self.c.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=sid),
                                         timeout=self.t)

    def group(self) -> Any:
        from csi_py._proto import csi_pb2_grpc

        return csi_pb2_grpc.GroupControllerStub(self.c.channel)

    def group_snapshot(self, name: str, vids: list[str]) -> pb.VolumeGroupSnapshot:
        return self.group().CreateVolumeGroupSnapshot(
            pb.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=vids),
            timeout=self.t).group_snapshot

    def delete_group(self, gid: str, sids: Iterable[str]) -> None:
        self.group().DeleteVolumeGroupSnapshot(
            pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=list(sids)),
            timeout=self.t)

    def condition(self, vid: str) -> Condition:
        """The volume's health as ControllerGetVolumeHealth reports it, summed up."""
        health = self.c.controller.ControllerGetVolumeHealth(
            pb.ControllerGetVolumeHealthRequest(volume_id=vid), timeout=self.t
        ).volume_health.health_statuses
        return Condition(bool(health), "; ".join(f"{h.reason}: {h.message}" for h in health))


@dataclass(frozen=True)
class Condition:
    abnormal: bool
    message: str


def publish_request(vid: str, staging: str, target: str, kind: Kind, readonly: bool = False,
                    ctx: dict[str, str] | None = None) -> pb.NodePublishVolumeRequest:
    """A NodePublishVolumeRequest (publish_context only when given)."""
    return pb.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging,
                                       target_path=target, volume_capability=capability(kind),
                                       readonly=readonly, publish_context=ctx or {})


class NodeSession:
    """Stages and publishes through gRPC and remembers what it did, so `close()` can
    undo it (unpublish every target, then unstage) even when the test failed."""

    def __init__(self, client: Any, timeout: float = 120.0) -> None:
        """`client`: as for Volumes (a function, for a driver that restarts)."""
        self.volumes = Volumes(client, timeout)
        self.targets: list[tuple[str, str]] = []
        self.stagings: list[tuple[str, str]] = []

    def stage(self, volume_id: str, path: str, cap: Kind,
              publish_context: dict[str, str] | None = None) -> None:
        self.stagings.append((volume_id, path))
        self.volumes.stage(volume_id, cap, path, publish_context or {})

    def publish(self, volume_id: str, staging: str, target: str, cap: Kind,
                readonly: bool = False) -> None:
        self.targets.append((volume_id, target))
        self.volumes.publish(volume_id, cap, staging, target, readonly)

    publish_request = staticmethod(publish_request)

    def undo_volume(self, volume_id: str) -> None:
        """Unpublish and unstage one volume now, and forget it. Raises grpc.RpcError."""
        for vid, target in [t for t in self.targets if t[0] == volume_id]:
            self.volumes.unpublish(vid, target)
            self.targets.remove((vid, target))
        for vid, staging in [s for s in self.stagings if s[0] == volume_id]:
            self.volumes.unstage(vid, staging)
            self.stagings.remove((vid, staging))

    def close(self) -> None:
        """Undo every publish, then every stage, newest first. Never raises: what it
        cannot undo it prints (the workdir's leak check then fails the test)."""
        errors = []
        for volume_id, target in reversed(self.targets):
            try:
                self.volumes.unpublish(volume_id, target)
            except grpc.RpcError as exc:
                errors.append(f"unpublish {volume_id} {target}: {exc.details()}")
        for volume_id, path in reversed(self.stagings):
            try:
                self.volumes.unstage(volume_id, path)
            except grpc.RpcError as exc:
                errors.append(f"unstage {volume_id} {path}: {exc.details()}")
        if errors:
            print("node session cleanup:", *errors, sep="\n  ")


def node_session(client: Any) -> closing[NodeSession]:
    """A NodeSession closed when the block ends, however it ends."""
    return closing(NodeSession(client))

"""CSI Controller service: request -> core call -> response."""

from __future__ import annotations

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.core.sources import ContentSource
from csi_py.domain.errors import InvalidArgument, Unimplemented
from csi_py.rpc import convert, health
from csi_py.rpc.errors import rpc_method
from csi_py.rpc.servicer import Servicer, ready_rpc

RPC = pb.ControllerServiceCapability.RPC
CONTROLLER_CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY,
    RPC.EXPAND_VOLUME,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.GET_VOLUME,
    RPC.SINGLE_NODE_MULTI_WRITER,
    RPC.MODIFY_VOLUME,
    RPC.GET_SNAPSHOT,
    RPC.GET_VOLUME_HEALTH,
    RPC.LIST_VOLUME_HEALTH,
)
# What --expansion node takes away from the controller side.
NODE_SIDE = (RPC.EXPAND_VOLUME, RPC.MODIFY_VOLUME)


class ControllerService(Servicer, csi_pb2_grpc.ControllerServicer):
    def _here(self) -> dict[str, str]:
        return {self.driver.config.topology_key: self.driver.config.node_id}

    def _volume(self, vol):
        return convert.volume(vol, self.driver.config.topology_key, self.driver.config.node_id)

    @ready_rpc
    def CreateVolume(self, request, context):  # noqa: N802
        source = None
        if request.HasField("volume_content_source"):
            src = request.volume_content_source
            kind = src.WhichOneof("type")
            if kind == "snapshot":
                source = ContentSource("snapshot", src.snapshot.snapshot_id)
            elif kind == "volume":
                source = ContentSource("volume", src.volume.volume_id)
            else:
                raise InvalidArgument("volume_content_source names neither a snapshot"
                                      " nor a volume")
            if not source.id:
                raise InvalidArgument(f"volume_content_source: the {kind} id is empty")
        vol = self.driver.controller.volumes.create_volume(
            name=request.name,
            capacity=convert.capacity_range(request.capacity_range),
            caps=convert.capabilities(request.volume_capabilities),
            parameters=dict(request.parameters),
            mutable_parameters=dict(request.mutable_parameters),
            requisite=[dict(t.segments) for t in request.accessibility_requirements.requisite],
            source=source,
        )
        response = pb.CreateVolumeResponse(volume=self._volume(vol))
        if source is not None:
            response.volume.content_source.CopyFrom(request.volume_content_source)
        return response

    @ready_rpc
    def DeleteVolume(self, request, context):  # noqa: N802
        self.driver.controller.volumes.delete_volume(request.volume_id)
        return pb.DeleteVolumeResponse()

    @ready_rpc
    def ControllerPublishVolume(self, request, context):  # noqa: N802
        publish_context = self.driver.controller.attachments.publish(
            request.volume_id,
            request.node_id,
            convert.optional_capability(request),
            request.readonly,
        )
        return pb.ControllerPublishVolumeResponse(publish_context=publish_context)

    @ready_rpc
    def ControllerUnpublishVolume(self, request, context):  # noqa: N802
        self.driver.controller.attachments.unpublish(request.volume_id, request.node_id)
        return pb.ControllerUnpublishVolumeResponse()

    @ready_rpc
    def ValidateVolumeCapabilities(self, request, context):  # noqa: N802
        caps = convert.capabilities(request.volume_capabilities) if \
            request.volume_capabilities else []
        ok, reason = self.driver.controller.volumes.validate_capabilities(
            request.volume_id, caps, dict(request.parameters), dict(request.mutable_parameters)
        )
        if not ok:
            return pb.ValidateVolumeCapabilitiesResponse(message=reason)
        return pb.ValidateVolumeCapabilitiesResponse(
            confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context,
                volume_capabilities=request.volume_capabilities,
                parameters=request.parameters,
                mutable_parameters=request.mutable_parameters,
            )
        )

    @ready_rpc
    def ListVolumes(self, request, context):  # noqa: N802
        listing = self.driver.controller.volumes.list_volumes(
            request.max_entries, request.starting_token)
        return pb.ListVolumesResponse(
            entries=[
                pb.ListVolumesResponse.Entry(
                    volume=self._volume(vol),
                    status=pb.ListVolumesResponse.VolumeStatus(published_node_ids=nodes),
                )
                for vol, nodes in listing.volumes
            ],
            next_token=listing.next_token,
        )

    @ready_rpc
    def ControllerListVolumeHealth(self, request, context):  # noqa: N802
        page = self.driver.health_report.list_page(request.max_entries, request.starting_token)
        return pb.ControllerListVolumeHealthResponse(
            entries=health.volume_health_list(page.entries), next_token=page.next_token)

    @ready_rpc
    def ControllerGetVolumeHealth(self, request, context):  # noqa: N802
        vol = self.driver.controller.volumes.get_ready_volume(request.volume_id)
        conditions = self.driver.health_report.volume_conditions(vol)
        return pb.ControllerGetVolumeHealthResponse(
            volume_health=health.volume_health(vol.id, conditions))

    @ready_rpc
    def GetCapacity(self, request, context):  # noqa: N802
        topology = dict(request.accessible_topology.segments) if \
            request.HasField("accessible_topology") else None
        report = self.driver.controller.space.for_request(
            convert.capabilities(request.volume_capabilities), dict(request.parameters), topology
        )
        response = pb.GetCapacityResponse(available_capacity=report.available_bytes)
        response.maximum_volume_size.value = report.maximum_volume_bytes
        response.minimum_volume_size.value = report.minimum_volume_bytes
        return response

    def _capabilities(self) -> tuple:
        if self.driver.config.expansion == "node":
            # The resizer may run on another node than the volume: it must neither grow
            # nor modify volumes itself (it would get NOT_FOUND); NodeExpandVolume grows.
            return tuple(c for c in CONTROLLER_CAPABILITIES if c not in NODE_SIDE)
        return CONTROLLER_CAPABILITIES

    def _require(self, capability: int, method: str) -> None:
        if capability not in self._capabilities():
            raise Unimplemented(
                f"{method} is not served with --expansion node: volumes grow through"
                " NodeExpandVolume on their node"
            )

    @rpc_method
    def ControllerGetCapabilities(self, request, context):  # noqa: N802
        return pb.ControllerGetCapabilitiesResponse(
            capabilities=[
                pb.ControllerServiceCapability(rpc=RPC(type=c)) for c in self._capabilities()
            ]
        )


    @ready_rpc
    def ControllerExpandVolume(self, request, context):  # noqa: N802
        self._require(RPC.EXPAND_VOLUME, "ControllerExpandVolume")
        size, needs_node = self.driver.controller.expansion.expand(
            request.volume_id,
            convert.capacity_range(request.capacity_range),
            convert.optional_capability(request),
        )
        return pb.ControllerExpandVolumeResponse(
            capacity_bytes=size, node_expansion_required=needs_node
        )

    @ready_rpc
    def ControllerGetVolume(self, request, context):  # noqa: N802
        vol = self.driver.controller.volumes.get_ready_volume(request.volume_id)
        nodes = self.driver.controller.attachments.published_nodes(vol.id)
        # CSI v1.13 dropped VolumeCondition: health is ControllerGetVolumeHealth's now.
        return pb.ControllerGetVolumeResponse(
            volume=self._volume(vol),
            status=pb.ControllerGetVolumeResponse.VolumeStatus(published_node_ids=nodes),
        )

    @ready_rpc
    def ControllerModifyVolume(self, request, context):  # noqa: N802
        self._require(RPC.MODIFY_VOLUME, "ControllerModifyVolume")
        self.driver.controller.volumes.modify(request.volume_id, dict(request.mutable_parameters))
        return pb.ControllerModifyVolumeResponse()

    # --- snapshots -------------------------------------------------------------------

    @ready_rpc
    def CreateSnapshot(self, request, context):  # noqa: N802
        snap = self.driver.snapshots.create(
            request.source_volume_id, request.name, dict(request.parameters),
            requisite=[dict(t.segments)
                       for t in request.accessibility_requirements.requisite],
        )
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot(snap, self._here()))

    @ready_rpc
    def DeleteSnapshot(self, request, context):  # noqa: N802
        self.driver.snapshots.delete(request.snapshot_id)
        return pb.DeleteSnapshotResponse()

    @ready_rpc
    def ListSnapshots(self, request, context):  # noqa: N802
        listing = self.driver.snapshots.list_page(
            request.max_entries, request.starting_token, request.source_volume_id,
            request.snapshot_id,
        )
        return pb.ListSnapshotsResponse(
            entries=[pb.ListSnapshotsResponse.Entry(snapshot=convert.snapshot(s, self._here()))
                     for s in listing.snapshots],
            next_token=listing.next_token,
        )

    @ready_rpc
    def GetSnapshot(self, request, context):  # noqa: N802
        snap = self.driver.snapshots.get(request.snapshot_id)
        return pb.GetSnapshotResponse(snapshot=convert.snapshot(snap, self._here()))

"""CSI Controller service: request -> core call -> response."""

from __future__ import annotations

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.core.driver import Driver
from csi_py.core.errors import InvalidArgument
from csi_py.rpc import convert
from csi_py.rpc.errors import rpc_method

RPC = pb.ControllerServiceCapability.RPC
CONTROLLER_CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.PUBLISH_READONLY,
    RPC.SINGLE_NODE_MULTI_WRITER,
)


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.core = driver.controller

    def _volume(self, vol):
        return convert.volume(vol, self.driver.config.topology_key, self.driver.config.node_id)

    @rpc_method
    def CreateVolume(self, request, context):  # noqa: N802
        self.driver.require_ready()
        if request.HasField("volume_content_source"):
            raise InvalidArgument(
                f"volume {request.name!r}: creating from a snapshot or volume is not supported yet"
            )
        vol = self.core.create_volume(
            name=request.name,
            capacity=convert.capacity_range(request.capacity_range),
            caps=convert.capabilities(request.volume_capabilities),
            parameters=dict(request.parameters),
            mutable_parameters=dict(request.mutable_parameters),
            requisite=[dict(t.segments) for t in request.accessibility_requirements.requisite],
        )
        return pb.CreateVolumeResponse(volume=self._volume(vol))

    @rpc_method
    def DeleteVolume(self, request, context):  # noqa: N802
        self.driver.require_ready()
        self.core.delete_volume(request.volume_id)
        return pb.DeleteVolumeResponse()

    @rpc_method
    def ControllerPublishVolume(self, request, context):  # noqa: N802
        self.driver.require_ready()
        publish_context = self.core.publish(
            request.volume_id,
            request.node_id,
            convert.optional_capability(request),
            request.readonly,
        )
        return pb.ControllerPublishVolumeResponse(publish_context=publish_context)

    @rpc_method
    def ControllerUnpublishVolume(self, request, context):  # noqa: N802
        self.driver.require_ready()
        self.core.unpublish(request.volume_id, request.node_id)
        return pb.ControllerUnpublishVolumeResponse()

    @rpc_method
    def ValidateVolumeCapabilities(self, request, context):  # noqa: N802
        self.driver.require_ready()
        caps = convert.capabilities(request.volume_capabilities) if \
            request.volume_capabilities else []
        ok, reason = self.core.validate_capabilities(
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

    @rpc_method
    def ListVolumes(self, request, context):  # noqa: N802
        self.driver.require_ready()
        listing = self.core.list_volumes(request.max_entries, request.starting_token)
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

    @rpc_method
    def GetCapacity(self, request, context):  # noqa: N802
        self.driver.require_ready()
        topology = dict(request.accessible_topology.segments) if \
            request.HasField("accessible_topology") else None
        report = self.core.get_capacity(
            convert.capabilities(request.volume_capabilities), dict(request.parameters), topology
        )
        response = pb.GetCapacityResponse(available_capacity=report.available_bytes)
        response.maximum_volume_size.value = report.maximum_volume_bytes
        response.minimum_volume_size.value = report.minimum_volume_bytes
        return response

    @rpc_method
    def ControllerGetCapabilities(self, request, context):  # noqa: N802
        return pb.ControllerGetCapabilitiesResponse(
            capabilities=[
                pb.ControllerServiceCapability(rpc=RPC(type=c)) for c in CONTROLLER_CAPABILITIES
            ]
        )


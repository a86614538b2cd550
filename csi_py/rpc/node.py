"""CSI Node service: request -> core call -> response."""

from __future__ import annotations

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.rpc import convert, health
from csi_py.rpc.errors import rpc_method
from csi_py.rpc.servicer import Servicer, ready_rpc

NodeRPC = pb.NodeServiceCapability.RPC
NODE_CAPABILITIES = (
    NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.EXPAND_VOLUME,
    NodeRPC.SINGLE_NODE_MULTI_WRITER, NodeRPC.GET_VOLUME_HEALTH, NodeRPC.GET_STORAGE_HEALTH,
)


class NodeService(Servicer, csi_pb2_grpc.NodeServicer):
    # A request field that core names otherwise is passed by keyword, so the mapping
    # (staging_target_path -> staging_path) reads off the call.

    @ready_rpc
    def NodeStageVolume(self, request, context):  # noqa: N802
        self.driver.node.stage(request.volume_id, staging_path=request.staging_target_path,
                               cap=convert.optional_capability(request),
                               publish_context=dict(request.publish_context))
        return pb.NodeStageVolumeResponse()

    @ready_rpc
    def NodeUnstageVolume(self, request, context):  # noqa: N802
        self.driver.node.unstage(request.volume_id, staging_path=request.staging_target_path)
        return pb.NodeUnstageVolumeResponse()

    @ready_rpc
    def NodePublishVolume(self, request, context):  # noqa: N802
        self.driver.node_calls.publish(
            request.volume_id, request.target_path, staging_path=request.staging_target_path,
            cap=convert.optional_capability(request), readonly=request.readonly,
            volume_context=dict(request.volume_context))
        return pb.NodePublishVolumeResponse()

    @ready_rpc
    def NodeUnpublishVolume(self, request, context):  # noqa: N802
        self.driver.node_calls.unpublish(request.volume_id, request.target_path)
        return pb.NodeUnpublishVolumeResponse()

    @ready_rpc
    def NodeGetVolumeStats(self, request, context):  # noqa: N802
        stats = self.driver.node.stats(request.volume_id, request.volume_path)
        Usage = pb.VolumeUsage
        usage = [Usage(unit=Usage.BYTES, total=stats.total_bytes,
                       available=stats.available_bytes, used=stats.used_bytes)]
        if not stats.is_block and stats.total_inodes:
            usage.append(Usage(unit=Usage.INODES, total=stats.total_inodes,
                               available=stats.free_inodes, used=stats.used_inodes))
        # CSI v1.13 dropped VolumeCondition: health is NodeGetVolumeHealth's now.
        return pb.NodeGetVolumeStatsResponse(usage=usage)

    @ready_rpc
    def NodeGetVolumeHealth(self, request, context):  # noqa: N802
        volume_id, conditions = self.driver.node_calls.volume_health(
            request.volume_id, request.volume_publish_path, request.staging_target_path)
        return pb.NodeGetVolumeHealthResponse(
            volume_health=health.volume_health(volume_id, conditions))

    @ready_rpc
    def NodeGetStorageHealth(self, request, context):  # noqa: N802
        return health.storage_health(self.driver.health_report.storage_conditions())

    @ready_rpc
    def NodeExpandVolume(self, request, context):  # noqa: N802
        size = self.driver.node.expand(
            request.volume_id,
            request.volume_path,
            request.staging_target_path,
            capacity=convert.capacity_range(request.capacity_range)
            if request.HasField("capacity_range") else None,
            cap=convert.optional_capability(request),
        )
        return pb.NodeExpandVolumeResponse(capacity_bytes=size)

    @rpc_method
    def NodeGetCapabilities(self, request, context):  # noqa: N802
        return pb.NodeGetCapabilitiesResponse(
            capabilities=[
                pb.NodeServiceCapability(rpc=NodeRPC(type=c)) for c in NODE_CAPABILITIES
            ]
        )

    @rpc_method
    def NodeGetInfo(self, request, context):  # noqa: N802
        config = self.driver.config
        return pb.NodeGetInfoResponse(
            node_id=config.node_id,
            max_volumes_per_node=config.max_volumes_per_node,
            accessible_topology=pb.Topology(segments={config.topology_key: config.node_id}),
        )

"""CSI GroupController service: consistent snapshots of several volumes at once."""

from __future__ import annotations

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.rpc import convert
from csi_py.rpc.errors import rpc_method
from csi_py.rpc.servicer import Servicer, ready_rpc

GroupRPC = pb.GroupControllerServiceCapability.RPC


class GroupControllerService(Servicer, csi_pb2_grpc.GroupControllerServicer):
    def _response(self, group):  # type: ignore[no-untyped-def]
        config = self.driver.config
        return convert.group_snapshot(group, self.driver.groups.members(group),
                                      {config.topology_key: config.node_id})

    @rpc_method
    def GroupControllerGetCapabilities(self, request, context):  # noqa: N802
        return pb.GroupControllerGetCapabilitiesResponse(
            capabilities=[
                pb.GroupControllerServiceCapability(
                    rpc=GroupRPC(type=GroupRPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT)
                )
            ]
        )

    @ready_rpc
    def CreateVolumeGroupSnapshot(self, request, context):  # noqa: N802
        group = self.driver.groups.create_group(
            request.name, list(request.source_volume_ids), dict(request.parameters)
        )
        return pb.CreateVolumeGroupSnapshotResponse(group_snapshot=self._response(group))

    @ready_rpc
    def DeleteVolumeGroupSnapshot(self, request, context):  # noqa: N802
        self.driver.groups.delete_group(request.group_snapshot_id, list(request.snapshot_ids))
        return pb.DeleteVolumeGroupSnapshotResponse()

    @ready_rpc
    def GetVolumeGroupSnapshot(self, request, context):  # noqa: N802
        group = self.driver.groups.get_group(request.group_snapshot_id, list(request.snapshot_ids))
        return pb.GetVolumeGroupSnapshotResponse(group_snapshot=self._response(group))

"""CSI Identity service."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import BoolValue

from csi_py import __version__
from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.domain.errors import FailedPrecondition
from csi_py.rpc.errors import rpc_method
from csi_py.rpc.servicer import Servicer

Cap = pb.PluginCapability


class IdentityService(Servicer, csi_pb2_grpc.IdentityServicer):
    @rpc_method
    def GetPluginInfo(self, request, context):  # noqa: N802
        return pb.GetPluginInfoResponse(
            name=self.driver.config.driver_name,
            vendor_version=__version__,
            manifest={"pool": self.driver.config.pool, "node": self.driver.config.node_id},
        )

    @rpc_method
    def GetPluginCapabilities(self, request, context):  # noqa: N802
        return pb.GetPluginCapabilitiesResponse(
            capabilities=[
                Cap(service=Cap.Service(type=Cap.Service.CONTROLLER_SERVICE)),
                Cap(service=Cap.Service(type=Cap.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
                Cap(service=Cap.Service(type=Cap.Service.GROUP_CONTROLLER_SERVICE)),
                # Snapshots are files in this node's pool: restores work only here.
                Cap(service=Cap.Service(
                    type=Cap.Service.SNAPSHOT_ACCESSIBILITY_CONSTRAINTS)),
                # Changed-block tracking for backup tools (through the
                # external-snapshot-metadata sidecar, when it is deployed).
                Cap(service=Cap.Service(type=Cap.Service.SNAPSHOT_METADATA_SERVICE)),
                Cap(volume_expansion=Cap.VolumeExpansion(type=Cap.VolumeExpansion.ONLINE)),
            ]
        )

    @rpc_method
    def Probe(self, request, context):  # noqa: N802
        missing = self.driver.missing_tools()
        if missing:
            # A domain error, not context.abort(): abort raises a bare Exception that
            # rpc_method would turn into INTERNAL.
            raise FailedPrecondition(
                f"required tools are missing: {', '.join(missing)}; install them (e2fsprogs,"
                " xfsprogs, btrfs-progs, util-linux) or narrow --filesystems"
            )
        return pb.ProbeResponse(ready=BoolValue(value=self.driver.ready))

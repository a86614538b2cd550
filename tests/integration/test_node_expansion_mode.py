"""--expansion node: for layouts where the resizer may run on another node than the
volume, ControllerExpandVolume and ControllerModifyVolume are not served, and
NodeExpandVolume on the volume's node grows the backing file and the filesystem."""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import block_capability, mount_capability
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration
RPC = pb.ControllerServiceCapability.RPC


@pytest.fixture
def driver_options() -> dict:
    return {"expansion": "node"}


def test_controller_side_growth_is_not_offered(driver):
    caps = {c.rpc.type for c in driver.client.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    assert RPC.EXPAND_VOLUME not in caps and RPC.MODIFY_VOLUME not in caps
    assert RPC.CREATE_DELETE_VOLUME in caps
    for call, request in (
        (driver.client.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id="vol-" + "0" * 32, capacity_range=pb.CapacityRange(required_bytes=1))),
        (driver.client.controller.ControllerModifyVolume, pb.ControllerModifyVolumeRequest(
            volume_id="vol-" + "0" * 32, mutable_parameters={"directIO": "true"})),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "NodeExpandVolume" in err.value.details()


@pytest.mark.parametrize("kind,size,grown", [("block", 32 * MiB, 64 * MiB),
                                             ("xfs", 300 * MiB, 400 * MiB)])
def test_node_expand_grows_file_device_and_filesystem(driver, kind, size, grown):
    cap = block_capability() if kind == "block" else mount_capability(kind)
    vid = driver.client.controller.CreateVolume(pb.CreateVolumeRequest(
        name=f"grow-{kind}", capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=[cap])).volume.volume_id
    stage, target = driver.path("stage"), driver.path("target")
    driver.client.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=stage, volume_capability=cap))
    driver.client.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=stage, target_path=target, volume_capability=cap))
    try:
        rsp = driver.client.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=target, staging_target_path=stage,
            capacity_range=pb.CapacityRange(required_bytes=grown), volume_capability=cap))
        assert rsp.capacity_bytes == grown
        assert os.path.getsize(os.path.join(driver.pool, "volumes", vid + ".img")) == grown
        listed = {e.volume.volume_id: e.volume.capacity_bytes for e in
                  driver.client.controller.ListVolumes(pb.ListVolumesRequest()).entries}
        assert listed[vid] == grown
        usage = driver.client.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=vid, volume_path=target)).usage[0]
        if kind == "block":
            assert usage.total == grown
        else:
            assert usage.total > size  # the filesystem grew online
        again = driver.client.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=target, staging_target_path=stage,
            capacity_range=pb.CapacityRange(required_bytes=grown), volume_capability=cap))
        assert again.capacity_bytes == grown  # idempotent
    finally:
        driver.client.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=target))
        driver.client.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=stage))
        driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))

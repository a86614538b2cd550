"""The Prometheus endpoint serves RPC counts and latency by method and code, and the
pool's state, after real RPCs against a real driver."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import block_capability

pytestmark = pytest.mark.integration


@pytest.fixture
def driver_options() -> dict:
    return {"metrics_address": "127.0.0.1:0"}


def scrape(driver) -> str:
    port = driver.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def value(text: str, metric: str) -> float:
    match = re.search(rf"^{re.escape(metric)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{metric} not in metrics:\n{text[:3000]}"
    return float(match.group(1))


def test_metrics_after_real_rpcs(driver):
    cap = block_capability()
    vol = driver.client.controller.CreateVolume(pb.CreateVolumeRequest(
        name="m1", capacity_range=pb.CapacityRange(required_bytes=32 << 20),
        volume_capabilities=[cap])).volume
    with pytest.raises(grpc.RpcError):
        driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest())  # INVALID_ARGUMENT
    driver.client.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=driver.path("stage"),
        volume_capability=cap))
    try:
        text = scrape(driver)
        assert value(text, 'csi_py_rpc_requests_total{code="OK",method="CreateVolume"}') == 1
        assert value(text, 'csi_py_rpc_requests_total{code="INVALID_ARGUMENT",'
                           'method="DeleteVolume"}') == 1
        assert value(text, 'csi_py_rpc_duration_seconds_count{method="NodeStageVolume"}') == 1
        assert value(text, "csi_py_volumes") == 1
        assert value(text, "csi_py_attached_loop_devices") == 1
        assert value(text, "csi_py_pool_capacity_bytes") > 0
        assert value(text, "csi_py_pool_available_bytes") > 0
        assert value(text, "csi_py_pool_provisioned_bytes") == 32 << 20
        assert value(text, "csi_py_ready") == 1
    finally:
        driver.client.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=driver.path("stage")))
        driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    text = scrape(driver)
    assert value(text, "csi_py_attached_loop_devices") == 0
    assert value(text, "csi_py_volumes") == 0


def test_health_conditions_as_metrics(driver):
    """The health RPCs' signals as series: a truncated image is a DATA_LOSS
    ImageTruncated series of its volume until the image is whole again; the pool's
    inode counts are there."""
    import os

    vol = driver.client.controller.CreateVolume(pb.CreateVolumeRequest(
        name="m-health", capacity_range=pb.CapacityRange(required_bytes=32 << 20),
        volume_capabilities=[block_capability()])).volume
    series = (f'csi_py_volume_condition{{reason="ImageTruncated",type="DATA_LOSS",'
              f'volume_id="{vol.volume_id}"}}')
    assert series not in scrape(driver)
    image = os.path.join(driver.pool, "volumes", vol.volume_id + ".img")
    os.truncate(image, 16 << 20)
    text = scrape(driver)
    assert value(text, series) == 1
    assert value(text, "csi_py_pool_inodes") >= value(text, "csi_py_pool_free_inodes")
    assert value(text, "csi_py_pool_read_only") == 0
    os.truncate(image, 32 << 20)
    assert series not in scrape(driver)
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))

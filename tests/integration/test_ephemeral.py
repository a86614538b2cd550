"""CSI ephemeral inline volumes: NodePublishVolume creates, stages and publishes the
volume; NodeUnpublishVolume removes it, leaving nothing behind."""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import block_capability, mount_capability

pytestmark = pytest.mark.integration
HANDLE = "csi-" + "ab" * 32  # what kubelet names an inline volume


def publish(driver, target, attrs=None, cap=None, handle=HANDLE):
    context = {"csi.storage.k8s.io/ephemeral": "true",
               "csi.storage.k8s.io/pod.name": "web-0", **(attrs or {})}
    return driver.client.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=handle, target_path=target, volume_context=context,
        volume_capability=cap or mount_capability()))


def listed(driver) -> list[str]:
    return [e.volume.volume_id for e in
            driver.client.controller.ListVolumes(pb.ListVolumesRequest()).entries]


def test_inline_volume_lives_and_dies_with_its_publish(driver):
    target = driver.path("pod-volume")
    publish(driver, target, {"size": "64Mi"})
    publish(driver, target, {"size": "64Mi"})  # kubelet retries: idempotent
    try:
        (vid,) = listed(driver)
        with open(os.path.join(target, "hello"), "w") as fh:
            fh.write("inline")
        stats = driver.client.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
        assert 0 < stats.usage[0].total <= 64 << 20
        with open("/proc/self/mountinfo") as fh:
            assert any(f" {target} " in line for line in fh)
    finally:
        driver.client.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=HANDLE, target_path=target))
    assert listed(driver) == []
    assert not os.path.exists(target)
    assert os.listdir(os.path.join(driver.pool, "volumes")) == []
    assert os.listdir(os.path.join(driver.pool, "ephemeral")) == []


@pytest.mark.parametrize("attrs,cap,word", [
    ({"size": "lots"}, None, "size"),
    ({"color": "red"}, None, "color"),
    ({"fsType": "zfs"}, None, "zfs"),
    ({}, block_capability(), "block"),
])
def test_bad_inline_volumes_are_refused_and_leave_nothing(driver, attrs, cap, word):
    target = driver.path("pod-volume")
    with pytest.raises(grpc.RpcError) as err:
        publish(driver, target, attrs, cap)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert word in err.value.details()
    assert listed(driver) == []
    assert not os.path.exists(target)


def test_unpublish_of_an_unknown_inline_volume_is_not_found(driver):
    with pytest.raises(grpc.RpcError) as err:
        driver.client.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id="csi-unknown", target_path=driver.path("t")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

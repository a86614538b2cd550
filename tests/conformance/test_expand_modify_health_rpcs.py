"""Expansion, attribute changes and health against the CSI v1.13 spec, through real gRPC
against a real server with real loop devices: ControllerExpandVolume, NodeExpandVolume,
ControllerModifyVolume (seen in sysfs), ControllerGetVolume, and the health RPCs
(ControllerGetVolumeHealth, ControllerListVolumeHealth, NodeGetVolumeHealth,
NodeGetStorageHealth) for healthy volumes (tests/integration/test_health.py makes them
sick).

Every REQUIRED field and every row of each error table; refused calls change nothing;
every error message names the volume and the cause."""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Mode, mount_capability
from tests.conformance.helpers import (
    SMALL,
    XFS_MIN,
    MiB,
    create,
    create_request,
    expect_error,
    expect_required,
    loops_of,
    unknown_volume_id,
    volume_image,
)
from tests.conftest import NODE_ID, has_cap_sys_resource
from tests.lifecycle import BLOCK, EXT4

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode
XFS = mount_capability("xfs")
TiB = 1 << 40


def _expand_req(volume_id: str, required: int = 0, limit: int = 0,
                cap: pb.VolumeCapability | None = None) -> pb.ControllerExpandVolumeRequest:
    request = pb.ControllerExpandVolumeRequest(
        volume_id=volume_id,
        capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit))
    if cap is not None:
        request.volume_capability.CopyFrom(cap)
    return request


def _expand(driver, volume_id: str, required: int, **kwargs
            ) -> pb.ControllerExpandVolumeResponse:
    return driver.client.controller.ControllerExpandVolume(
        _expand_req(volume_id, required, **kwargs), timeout=60)


def _node_expand(driver, volume_id: str, path: str, **kwargs) -> pb.NodeExpandVolumeResponse:
    return driver.client.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=path, **kwargs), timeout=60)


def _get_volume(driver, volume_id: str) -> pb.ControllerGetVolumeResponse:
    return driver.client.controller.ControllerGetVolume(
        pb.ControllerGetVolumeRequest(volume_id=volume_id), timeout=30)


def _modify(driver, volume_id: str, **params: str) -> None:
    driver.client.controller.ControllerModifyVolume(
        pb.ControllerModifyVolumeRequest(volume_id=volume_id, mutable_parameters=params),
        timeout=30)


def _loop(driver, volume_id: str) -> str:
    """The sysfs name (loopN) of the volume's one loop device."""
    found = loops_of(driver, volume_id)
    assert len(found) == 1, f"expected one loop device for {volume_id}, found {found}"
    return found[0]


def _sysfs(loop: str, attribute: str) -> str:
    with open(f"/sys/block/{loop}/{attribute}") as fh:
        return fh.read().strip()


def _fs_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


# --- ControllerExpandVolume ---------------------------------------------------------------


def test_controller_expand_required_fields(driver, vol):
    call = driver.client.controller.ControllerExpandVolume
    expect_error(call, _expand_req("", 64 * MiB), Code.INVALID_ARGUMENT, "volume_id", "required")
    expect_error(call, pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id),
                 Code.INVALID_ARGUMENT, vol.volume_id, "capacity_range", "required")
    expect_error(call, _expand_req(vol.volume_id, 0, 0),
                 Code.INVALID_ARGUMENT, vol.volume_id, "capacity_range", "required")
    assert _get_volume(driver, vol.volume_id).volume.capacity_bytes == SMALL


@pytest.mark.parametrize("required, limit, words", [
    (-1, 0, ("negative",)),
    (64 * MiB, -1, ("negative",)),
    (64 * MiB, 48 * MiB, ("larger than limit_bytes",)),
])
def test_controller_expand_invalid_ranges(driver, vol, required, limit, words):
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(vol.volume_id, required, limit),
                 Code.INVALID_ARGUMENT, vol.volume_id, *words)
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == SMALL


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_controller_expand_unknown_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(volume_id, 64 * MiB),
                 Code.NOT_FOUND, volume_id, "does not exist")


def test_controller_expand_shrink_is_out_of_range(driver, vol):
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(vol.volume_id, 16 * MiB, 16 * MiB),
                 Code.OUT_OF_RANGE, vol.volume_id, str(SMALL), str(16 * MiB), "shrink")
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == SMALL
    assert _get_volume(driver, vol.volume_id).volume.capacity_bytes == SMALL


def test_controller_expand_to_a_smaller_requirement_is_ok(driver, vol):
    """"If a volume ... is already larger than or equal to the target capacity of the
    expansion request, the plugin SHOULD reply 0 OK"."""
    rsp = _expand(driver, vol.volume_id, 16 * MiB)
    assert rsp.capacity_bytes == SMALL
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == SMALL


@pytest.mark.parametrize("required, limit", [
    (40 * MiB + 1, 40 * MiB + 1),  # no multiple of the 1 MiB granularity fits
    (65 * 1024 * 1024 * MiB, 0),  # more than the largest volume
])
def test_controller_expand_impossible_size_is_out_of_range(driver, vol, required, limit):
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(vol.volume_id, required, limit),
                 Code.OUT_OF_RANGE, vol.volume_id, str(required))
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == SMALL


def test_controller_expand_grows_and_is_idempotent(driver, vol):
    rsp = _expand(driver, vol.volume_id, 40 * MiB + 1)
    assert rsp.capacity_bytes == 41 * MiB  # rounded up to the granularity
    assert rsp.node_expansion_required  # no capability: assume a filesystem
    image = volume_image(driver, vol.volume_id)
    assert os.path.getsize(image) == 41 * MiB
    assert os.stat(image).st_blocks == 0, "growing a thin volume must not allocate"
    assert _get_volume(driver, vol.volume_id).volume.capacity_bytes == 41 * MiB
    again = _expand(driver, vol.volume_id, 40 * MiB + 1)
    assert again.capacity_bytes == 41 * MiB
    # Listed with the new size too, and after a restart.
    driver.restart()
    listed = driver.client.controller.ListVolumes(pb.ListVolumesRequest(), timeout=30)
    assert [e.volume.capacity_bytes for e in listed.entries] == [41 * MiB]


def test_controller_expand_thick_volume_allocates(driver):
    vol = create(driver, "pvc-thick", params={"provisioning": "thick"})
    _expand(driver, vol.volume_id, 48 * MiB)
    image = volume_image(driver, vol.volume_id)
    assert os.path.getsize(image) == 48 * MiB
    assert os.stat(image).st_blocks * 512 >= 48 * MiB


@pytest.mark.parametrize("cap, needed", [(EXT4, True), (BLOCK, False)])
def test_controller_expand_says_whether_the_node_must_act(driver, vol, cap, needed):
    assert _expand(driver, vol.volume_id, 48 * MiB, cap=cap).node_expansion_required is needed


@pytest.mark.parametrize("cap, words", [
    (mount_capability("ext4", mode=Mode.MULTI_NODE_MULTI_WRITER), ("MULTI_NODE_MULTI_WRITER",)),
    (XFS, ("ext4", "xfs")),
])
def test_controller_expand_exceeding_capabilities_is_invalid(driver, vol, cap, words):
    """The spec's "Exceeds capabilities": INVALID_ARGUMENT."""
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(vol.volume_id, 64 * MiB, cap=cap),
                 Code.INVALID_ARGUMENT, vol.volume_id, *words)
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == SMALL


def test_controller_expand_of_btrfs_grows_to_at_least_256_mib(driver):
    """The kernel refuses to resize btrfs to under 256 MiB: a smaller growth is rounded up
    to 256 MiB when the limit allows, else OUT_OF_RANGE; a block volume is not held to it."""
    btrfs = mount_capability("btrfs")
    vol = create(driver, "pvc-btrfs", size=128 * MiB, caps=[btrfs, BLOCK])
    expect_error(driver.client.controller.ControllerExpandVolume,
                 _expand_req(vol.volume_id, 192 * MiB, 200 * MiB, cap=btrfs),
                 Code.OUT_OF_RANGE, vol.volume_id, "btrfs", str(256 * MiB), str(200 * MiB))
    assert os.path.getsize(volume_image(driver, vol.volume_id)) == 128 * MiB
    assert _expand(driver, vol.volume_id, 192 * MiB, cap=btrfs).capacity_bytes == 256 * MiB
    raw = create(driver, "pvc-btrfs-raw", size=128 * MiB, caps=[btrfs, BLOCK])
    assert _expand(driver, raw.volume_id, 192 * MiB, cap=BLOCK).capacity_bytes == 192 * MiB


def test_controller_expand_of_a_staged_volume_grows_its_loop_device(driver, vol, node):
    node.stage(vol.volume_id, driver.path("st"), BLOCK)
    loop = _loop(driver, vol.volume_id)
    assert int(_sysfs(loop, "size")) * 512 == SMALL
    _expand(driver, vol.volume_id, 48 * MiB, cap=BLOCK)
    assert int(_sysfs(loop, "size")) * 512 == 48 * MiB


# --- NodeExpandVolume ---------------------------------------------------------------------


def test_node_expand_required_fields(driver, vol):
    expect_required(driver.client.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
        volume_id=vol.volume_id, volume_path=driver.path("st")), "volume_id", "volume_path")


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_node_expand_unknown_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.node.NodeExpandVolume,
                 pb.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=driver.path("st")),
                 Code.NOT_FOUND, volume_id, "does not exist")


def test_node_expand_where_the_volume_is_not_is_not_found(driver, vol, node):
    node.stage(vol.volume_id, driver.path("st"), EXT4)
    for where in (driver.path("elsewhere"), driver.workdir, "relative/st"):
        expect_error(driver.client.node.NodeExpandVolume,
                     pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=where),
                     Code.NOT_FOUND, vol.volume_id, where)


def test_node_expand_with_nothing_to_grow_is_ok(driver, vol, node):
    node.stage(vol.volume_id, driver.path("st"), EXT4)
    before = _fs_bytes(driver.path("st"))
    for _ in range(2):
        assert _node_expand(driver, vol.volume_id, driver.path("st")).capacity_bytes == SMALL
    assert _fs_bytes(driver.path("st")) == before


def test_node_expand_grows_a_mounted_xfs(driver, node):
    vol = create(driver, "pvc-xfs", size=XFS_MIN, caps=[XFS])
    staging, target = driver.path("st"), driver.path("tgt")
    node.stage(vol.volume_id, staging, XFS)
    node.publish(vol.volume_id, staging, target, XFS)
    before = _fs_bytes(target)
    assert _expand(driver, vol.volume_id, XFS_MIN + 64 * MiB, cap=XFS).node_expansion_required
    assert _fs_bytes(target) == before, "the controller alone must not touch the filesystem"
    rsp = _node_expand(driver, vol.volume_id, target, staging_target_path=staging,
                       volume_capability=XFS,
                       capacity_range=pb.CapacityRange(required_bytes=XFS_MIN + 64 * MiB))
    assert rsp.capacity_bytes == XFS_MIN + 64 * MiB
    grown = _fs_bytes(target)
    assert grown >= before + 60 * MiB
    # Idempotent, and the staging path names the same volume.
    assert _node_expand(driver, vol.volume_id, staging).capacity_bytes == XFS_MIN + 64 * MiB
    assert _fs_bytes(target) == grown


def test_node_expand_of_a_block_volume_refreshes_the_device(driver, vol, node):
    staging, target = driver.path("st"), driver.path("blk")
    node.stage(vol.volume_id, staging, BLOCK)
    node.publish(vol.volume_id, staging, target, BLOCK)
    _expand(driver, vol.volume_id, 48 * MiB, cap=BLOCK)
    rsp = _node_expand(driver, vol.volume_id, target, volume_capability=BLOCK)
    assert rsp.capacity_bytes == 48 * MiB
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == 48 * MiB
    finally:
        os.close(fd)


@pytest.mark.skipif(has_cap_sys_resource(), reason="this process can grow ext4 online")
def test_node_expand_of_a_mounted_ext4_without_cap_sys_resource_is_failed_precondition(
        driver, vol, node):
    """The spec's "Volume in use" (FAILED_PRECONDITION, caller must not retry): ext4
    online resize needs CAP_SYS_RESOURCE, which this VM's root lacks."""
    staging = driver.path("st")
    node.stage(vol.volume_id, staging, EXT4)
    before = _fs_bytes(staging)
    _expand(driver, vol.volume_id, 48 * MiB, cap=EXT4)
    expect_error(driver.client.node.NodeExpandVolume,
                 pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=staging),
                 Code.FAILED_PRECONDITION, vol.volume_id, "ext4", "CAP_SYS_RESOURCE")
    assert _fs_bytes(staging) == before


@pytest.mark.parametrize("required, limit", [
    (48 * MiB, 0),  # more than the controller gave the volume
    (0, 16 * MiB),  # a limit below what it already has
])
def test_node_expand_unsupported_capacity_range_is_out_of_range(driver, vol, node, required,
                                                               limit):
    staging = driver.path("st")
    node.stage(vol.volume_id, staging, EXT4)
    before = _fs_bytes(staging)
    expect_error(driver.client.node.NodeExpandVolume,
                 pb.NodeExpandVolumeRequest(
                     volume_id=vol.volume_id, volume_path=staging,
                     capacity_range=pb.CapacityRange(required_bytes=required,
                                                     limit_bytes=limit)),
                 Code.OUT_OF_RANGE, vol.volume_id, str(SMALL), str(required or limit))
    assert _fs_bytes(staging) == before


@pytest.mark.parametrize("cap, words", [
    (BLOCK, ("mount", "block")),
    (XFS, ("ext4", "xfs")),
    (mount_capability("ext4", mode=Mode.MULTI_NODE_MULTI_WRITER), ("MULTI_NODE_MULTI_WRITER",)),
])
def test_node_expand_exceeding_capabilities_is_invalid(driver, vol, node, cap, words):
    """The spec's "Exceeds capabilities": INVALID_ARGUMENT."""
    node.stage(vol.volume_id, driver.path("st"), EXT4)
    expect_error(driver.client.node.NodeExpandVolume,
                 pb.NodeExpandVolumeRequest(volume_id=vol.volume_id,
                                            volume_path=driver.path("st"),
                                            volume_capability=cap),
                 Code.INVALID_ARGUMENT, vol.volume_id, *words)


# --- ControllerModifyVolume ---------------------------------------------------------------


def test_modify_required_fields(driver):
    expect_error(driver.client.controller.ControllerModifyVolume,
                 pb.ControllerModifyVolumeRequest(mutable_parameters={"directIO": "true"}),
                 Code.INVALID_ARGUMENT, "volume_id", "required")


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_modify_unknown_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.controller.ControllerModifyVolume,
                 pb.ControllerModifyVolumeRequest(volume_id=volume_id,
                                                  mutable_parameters={"directIO": "true"}),
                 Code.NOT_FOUND, volume_id, "does not exist")


@pytest.mark.parametrize("params, words", [
    ({"iops": "100"}, ("iops", "not supported", "directIO", "readAheadKiB")),
    ({"readAheadKiB": "256", "XXX_FakeKey": "x"}, ("XXX_FakeKey",)),
    ({"directIO": "yes"}, ("directIO", "'true' or 'false'")),
    ({"directIO": ""}, ("directIO",)),
    ({"readAheadKiB": "-1"}, ("readAheadKiB", "0 to 65536")),
    ({"readAheadKiB": "65537"}, ("readAheadKiB", "0 to 65536")),
    ({"readAheadKiB": "1e3"}, ("readAheadKiB",)),
    ({"readAheadKiB": "²"}, ("readAheadKiB",)),
    ({"readAheadKiB": ""}, ("readAheadKiB",)),
    ({"readAheadKiB": "512", "directIO": "maybe"}, ("directIO",)),
])
def test_modify_bad_parameters_are_invalid_and_change_nothing(driver, vol, node, params, words):
    """"The SP MUST NOT have applied any modification to the volume as part of this
    specific call": not to the live loop device, not to what the next stage applies."""
    staging = driver.path("st")
    node.stage(vol.volume_id, staging, BLOCK)
    loop = _loop(driver, vol.volume_id)
    _modify(driver, vol.volume_id, readAheadKiB="128", directIO="true")
    expect_error(driver.client.controller.ControllerModifyVolume,
                 pb.ControllerModifyVolumeRequest(volume_id=vol.volume_id,
                                                  mutable_parameters=params),
                 Code.INVALID_ARGUMENT, vol.volume_id, *words)
    assert (_sysfs(loop, "queue/read_ahead_kb"), _sysfs(loop, "loop/dio")) == ("128", "1")
    # What the catalog keeps for the next stage is unchanged too.
    driver.client.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging),
        timeout=60)
    node.stage(vol.volume_id, staging, BLOCK)
    loop = _loop(driver, vol.volume_id)
    assert (_sysfs(loop, "queue/read_ahead_kb"), _sysfs(loop, "loop/dio")) == ("128", "1")


def test_modify_a_staged_volume_changes_its_loop_device(driver, vol, node):
    staging, target = driver.path("st"), driver.path("tgt")
    node.stage(vol.volume_id, staging, EXT4)
    node.publish(vol.volume_id, staging, target, EXT4)
    loop = _loop(driver, vol.volume_id)
    assert _sysfs(loop, "loop/dio") == "1"
    _modify(driver, vol.volume_id, readAheadKiB="512")
    assert _sysfs(loop, "queue/read_ahead_kb") == "512"
    assert _sysfs(loop, "loop/dio") == "1", "a key not given must not change"
    for _ in range(2):  # idempotent
        _modify(driver, vol.volume_id, directIO="false")
        assert (_sysfs(loop, "loop/dio"), _sysfs(loop, "queue/read_ahead_kb")) == ("0", "512")
    _modify(driver, vol.volume_id, directIO="TRUE", readAheadKiB="0")
    assert (_sysfs(loop, "loop/dio"), _sysfs(loop, "queue/read_ahead_kb")) == ("1", "0")
    # The mounted filesystem kept working through the changes.
    with open(os.path.join(target, "f"), "wb") as fh:
        fh.write(b"x" * MiB)
        os.fsync(fh.fileno())


def test_modify_an_unstaged_volume_applies_at_the_next_stage(driver, vol, node):
    _modify(driver, vol.volume_id, directIO="false", readAheadKiB="1024")
    _modify(driver, vol.volume_id, readAheadKiB="256")  # merged with the earlier change
    node.stage(vol.volume_id, driver.path("st"), EXT4)
    loop = _loop(driver, vol.volume_id)
    assert (_sysfs(loop, "loop/dio"), _sysfs(loop, "queue/read_ahead_kb")) == ("0", "256")


def test_mutable_parameters_at_creation_apply_at_stage(driver, node):
    request = create_request("pvc-vac")
    request.mutable_parameters["readAheadKiB"] = "64"
    request.mutable_parameters["directIO"] = "false"
    vol = driver.client.controller.CreateVolume(request, timeout=60).volume
    node.stage(vol.volume_id, driver.path("st"), EXT4)
    loop = _loop(driver, vol.volume_id)
    assert (_sysfs(loop, "loop/dio"), _sysfs(loop, "queue/read_ahead_kb")) == ("0", "64")


def test_create_volume_refuses_bad_mutable_values(driver):
    request = create_request("pvc-badvac")
    request.mutable_parameters["readAheadKiB"] = "lots"
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-badvac", "readAheadKiB")


# --- ControllerGetVolume and healthy conditions -------------------------------------------


def test_get_volume_required_fields(driver):
    expect_error(driver.client.controller.ControllerGetVolume,
                 pb.ControllerGetVolumeRequest(), Code.INVALID_ARGUMENT, "volume_id", "required")


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_get_unknown_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.controller.ControllerGetVolume,
                 pb.ControllerGetVolumeRequest(volume_id=volume_id),
                 Code.NOT_FOUND, volume_id, "does not exist")


def test_get_deleted_volume_is_not_found(driver, vol):
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                                          timeout=30)
    expect_error(driver.client.controller.ControllerGetVolume,
                 pb.ControllerGetVolumeRequest(volume_id=vol.volume_id),
                 Code.NOT_FOUND, vol.volume_id)


def test_get_volume_reports_the_volume_and_its_nodes(driver, vol):
    rsp = _get_volume(driver, vol.volume_id)
    assert rsp.volume == vol
    assert list(rsp.status.published_node_ids) == []
    # v1.13 reserves the field VolumeCondition had: nothing else is on the wire (unknown
    # fields survive parsing and would be serialized again).
    assert rsp.status.SerializeToString() == b""
    driver.client.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE_ID,
                                          volume_capability=EXT4), timeout=30)
    assert list(_get_volume(driver, vol.volume_id).status.published_node_ids) == [NODE_ID]


@pytest.mark.parametrize("access", ["mount", "block"])
def test_healthy_staged_volumes_report_normal_conditions(driver, vol, node, access):
    cap = EXT4 if access == "mount" else BLOCK
    staging, target = driver.path("st"), driver.path("tgt")
    node.stage(vol.volume_id, staging, cap)
    node.publish(vol.volume_id, staging, target, cap)
    health = driver.client.controller.ControllerGetVolumeHealth(
        pb.ControllerGetVolumeHealthRequest(volume_id=vol.volume_id), timeout=30)
    assert health.volume_health.volume_id == vol.volume_id
    assert list(health.volume_health.health_statuses) == []
    node_health = driver.client.node.NodeGetVolumeHealth(
        pb.NodeGetVolumeHealthRequest(volume_id=vol.volume_id, volume_publish_path=target,
                                      staging_target_path=staging), timeout=30)
    assert node_health.volume_health.volume_id == vol.volume_id
    assert list(node_health.volume_health.health_statuses) == []
    listed = driver.client.controller.ControllerListVolumeHealth(
        pb.ControllerListVolumeHealthRequest(), timeout=30)
    assert list(listed.entries) == [] and listed.next_token == ""
    stats = driver.client.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=target), timeout=30)
    assert stats.usage
    assert stats.SerializeToString() == pb.NodeGetVolumeStatsResponse(
        usage=stats.usage).SerializeToString()

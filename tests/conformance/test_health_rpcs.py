"""The CSI v1.13 health RPCs' error tables and paging, through real gRPC against a real
server: ControllerGetVolumeHealth, ControllerListVolumeHealth (paged like ListVolumes,
tokens stable across deletions, ABORTED on tokens never issued), NodeGetVolumeHealth,
NodeGetStorageHealth. tests/integration/test_health.py produces each condition."""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conformance.helpers import SMALL, create, expect_error, unknown_volume_id

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode


def _list(driver, max_entries=0, token=""):
    return driver.client.controller.ControllerListVolumeHealth(
        pb.ControllerListVolumeHealthRequest(max_entries=max_entries, starting_token=token),
        timeout=30)


def _truncate(driver, volume_id: str) -> None:
    os.truncate(os.path.join(driver.pool, "volumes", volume_id + ".img"), SMALL // 2)


def test_get_volume_health_required_fields(driver):
    expect_error(driver.client.controller.ControllerGetVolumeHealth,
                 pb.ControllerGetVolumeHealthRequest(), Code.INVALID_ARGUMENT, "volume_id")
    expect_error(driver.client.node.NodeGetVolumeHealth,
                 pb.NodeGetVolumeHealthRequest(), Code.INVALID_ARGUMENT, "volume_id")


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_health_of_an_unknown_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.controller.ControllerGetVolumeHealth,
                 pb.ControllerGetVolumeHealthRequest(volume_id=volume_id), Code.NOT_FOUND,
                 volume_id)
    expect_error(driver.client.node.NodeGetVolumeHealth,
                 pb.NodeGetVolumeHealthRequest(volume_id=volume_id), Code.NOT_FOUND,
                 volume_id)


@pytest.mark.parametrize("field", ["volume_publish_path", "staging_target_path"])
def test_node_volume_health_refuses_relative_paths(driver, field):
    vol = create(driver, "pvc-h-rel")
    expect_error(driver.client.node.NodeGetVolumeHealth,
                 pb.NodeGetVolumeHealthRequest(volume_id=vol.volume_id, **{field: "a/b"}),
                 Code.INVALID_ARGUMENT, field, "absolute")


def test_list_volume_health_negative_max_entries_is_invalid(driver):
    expect_error(driver.client.controller.ControllerListVolumeHealth,
                 pb.ControllerListVolumeHealthRequest(max_entries=-1),
                 Code.INVALID_ARGUMENT, "max_entries")


@pytest.mark.parametrize("token", ["garbage", "0", "-1", "99999999999"])
def test_list_volume_health_tokens_never_issued_are_aborted(driver, token):
    create(driver, "pvc-h-token")
    expect_error(driver.client.controller.ControllerListVolumeHealth,
                 pb.ControllerListVolumeHealthRequest(starting_token=token), Code.ABORTED,
                 token)


def test_list_volume_health_lists_only_unhealthy_volumes_page_by_page(driver):
    """Eight volumes, five made unhealthy: pages of two list exactly those five, in
    creation order, each once; deleting a listed volume between pages neither repeats
    nor skips the others; a page of everything needs no token."""
    vols = [create(driver, f"pvc-h-{i}") for i in range(8)]
    sick = [v.volume_id for i, v in enumerate(vols) if i in (0, 2, 3, 5, 7)]
    for vid in sick:
        _truncate(driver, vid)
    everything = _list(driver)
    assert [e.volume_id for e in everything.entries] == sick
    assert everything.next_token == ""
    for entry in everything.entries:
        assert [(s.status, s.reason) for s in entry.health_statuses] == \
            [(pb.DATA_LOSS, "ImageTruncated")]
    first = _list(driver, max_entries=2)
    assert [e.volume_id for e in first.entries] == sick[:2]
    assert first.next_token
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=sick[1]),
                                          timeout=30)
    seen, token = [], first.next_token
    while token:
        page = _list(driver, max_entries=2, token=token)
        assert len(page.entries) <= 2
        seen.extend(e.volume_id for e in page.entries)
        token = page.next_token
    assert seen == sick[2:]
    # The same token again gives the same page (idempotent).
    assert [e.volume_id for e in _list(driver, 2, first.next_token).entries] == sick[2:4]


def test_storage_health_of_a_healthy_pool_is_empty(driver):
    rsp = driver.client.node.NodeGetStorageHealth(pb.NodeGetStorageHealthRequest(),
                                                  timeout=30)
    assert list(rsp.backend_health) == []

"""GroupController RPCs against the CSI v1.12 spec, through real gRPC against a real
server: CreateVolumeGroupSnapshot, DeleteVolumeGroupSnapshot, GetVolumeGroupSnapshot.
Every REQUIRED field, every row of each error table, the idempotency rules, and the
fields a group snapshot reports. Refused calls are checked to have changed nothing, and
every error message to name the object and the cause."""

from __future__ import annotations

import time

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.snapshot_ids import file_key
from csi_py.rpc.client import block_capability
from tests.conformance.helpers import (
    SMALL,
    create,
    expect_error,
    group_stub,
    restore_request,
    snapshot,
    snapshot_files,
    unknown_group_id,
    unknown_volume_id,
)

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode
GroupRPC = pb.GroupControllerServiceCapability.RPC


def _create_request(name: str, *volume_ids: str, **params: str
                    ) -> pb.CreateVolumeGroupSnapshotRequest:
    return pb.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=list(volume_ids),
                                               parameters=params)


def _create_group(driver, name: str, *volume_ids: str) -> pb.VolumeGroupSnapshot:
    return group_stub(driver).CreateVolumeGroupSnapshot(
        _create_request(name, *volume_ids), timeout=120).group_snapshot


def _get_group(driver, group_id: str, snapshot_ids=()) -> pb.VolumeGroupSnapshot:
    return group_stub(driver).GetVolumeGroupSnapshot(
        pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=group_id,
                                         snapshot_ids=list(snapshot_ids)),
        timeout=30).group_snapshot


def _listed(driver) -> list[pb.Snapshot]:
    return [e.snapshot for e in driver.client.controller.ListSnapshots(
        pb.ListSnapshotsRequest(), timeout=30).entries]


def _ids(group: pb.VolumeGroupSnapshot) -> list[str]:
    return [s.snapshot_id for s in group.snapshots]


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


@pytest.fixture
def vols(driver) -> list[pb.Volume]:
    """Two filesystem volumes and a block volume."""
    return [create(driver, "pvc-g1"), create(driver, "pvc-g2"),
            create(driver, "pvc-g3", caps=[block_capability()])]


# --- capabilities ------------------------------------------------------------------------


def test_group_controller_is_advertised_and_served(driver):
    plugin = driver.client.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(),
                                                          timeout=10)
    services = {c.service.type for c in plugin.capabilities if c.HasField("service")}
    assert pb.PluginCapability.Service.GROUP_CONTROLLER_SERVICE in services
    rsp = group_stub(driver).GroupControllerGetCapabilities(
        pb.GroupControllerGetCapabilitiesRequest(), timeout=10)
    assert [c.rpc.type for c in rsp.capabilities] == \
        [GroupRPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]


# --- CreateVolumeGroupSnapshot ------------------------------------------------------------


def test_create_group_required_fields(driver, vols):
    call = group_stub(driver).CreateVolumeGroupSnapshot
    expect_error(call, _create_request("", vols[0].volume_id),
                 Code.INVALID_ARGUMENT, "name", "required")
    expect_error(call, _create_request("group-empty"),
                 Code.INVALID_ARGUMENT, "group-empty", "source_volume_ids", "required")
    assert snapshot_files(driver) == set() and _listed(driver) == []


def test_create_group_with_a_repeated_source_is_invalid(driver, vols):
    a, b = vols[0].volume_id, vols[1].volume_id
    expect_error(group_stub(driver).CreateVolumeGroupSnapshot,
                 _create_request("group-twice", a, b, a),
                 Code.INVALID_ARGUMENT, "group-twice", a, "more than once")
    assert snapshot_files(driver) == set() and _listed(driver) == []


@pytest.mark.parametrize("missing", [unknown_volume_id(), "garbage"])
def test_create_group_with_an_unknown_source_is_not_found(driver, vols, missing):
    """Nothing of the group is left behind: no snapshot of the volumes that do exist."""
    expect_error(group_stub(driver).CreateVolumeGroupSnapshot,
                 _create_request("group-missing", vols[0].volume_id, missing,
                                 vols[1].volume_id),
                 Code.NOT_FOUND, "group-missing", missing, "does not exist")
    assert snapshot_files(driver) == set() and _listed(driver) == []
    # The name is not taken by the failed attempt.
    group = _create_group(driver, "group-missing", vols[0].volume_id, vols[1].volume_id)
    assert group.ready_to_use


def test_create_group_refuses_unknown_parameters(driver, vols):
    expect_error(group_stub(driver).CreateVolumeGroupSnapshot,
                 _create_request("group-params", vols[0].volume_id, consistency="crash"),
                 Code.INVALID_ARGUMENT, "group-params", "consistency")
    assert snapshot_files(driver) == set()


def test_create_group_reports_truthful_fields(driver, vols):
    ids = [v.volume_id for v in vols]
    before = time.time()
    group = _create_group(driver, "group-fields", *ids)
    after = time.time()
    assert group.group_snapshot_id.startswith("group-")
    assert group.ready_to_use
    assert before - 1 <= _seconds(group.creation_time) <= after + 1
    assert sorted(s.source_volume_id for s in group.snapshots) == sorted(ids)
    for snap in group.snapshots:
        assert snap.group_snapshot_id == group.group_snapshot_id
        assert snap.ready_to_use and snap.size_bytes == SMALL
        assert before - 1 <= _seconds(snap.creation_time) <= after + 1
    assert snapshot_files(driver) == {file_key(s) + ".img" for s in _ids(group)}
    # Members are ordinary snapshots to GetSnapshot and ListSnapshots.
    assert sorted(_listed(driver), key=lambda s: s.snapshot_id) == \
        sorted(group.snapshots, key=lambda s: s.snapshot_id)


def test_create_group_is_idempotent(driver, vols):
    a, b = vols[0].volume_id, vols[1].volume_id
    first = _create_group(driver, "group-idem", a, b)
    assert _create_group(driver, "group-idem", a, b) == first
    # The order of the sources does not matter.
    again = _create_group(driver, "group-idem", b, a)
    assert again.group_snapshot_id == first.group_snapshot_id
    assert sorted(_ids(again)) == sorted(_ids(first))
    driver.restart()
    assert _create_group(driver, "group-idem", a, b) == first
    assert snapshot_files(driver) == {file_key(s) + ".img" for s in _ids(first)}


@pytest.mark.parametrize("change", ["other", "fewer", "more"])
def test_create_group_name_with_other_sources_is_already_exists(driver, vols, change):
    a, b, c = (v.volume_id for v in vols)
    first = _create_group(driver, "group-taken", a, b)
    sources = {"other": [a, c], "fewer": [a], "more": [a, b, c]}[change]
    expect_error(group_stub(driver).CreateVolumeGroupSnapshot,
                 _create_request("group-taken", *sources),
                 Code.ALREADY_EXISTS, "group-taken", first.group_snapshot_id, a, b)
    assert snapshot_files(driver) == {file_key(s) + ".img" for s in _ids(first)}
    assert _get_group(driver, first.group_snapshot_id) == first


def test_group_member_restores_as_a_volume(driver, vols):
    group = _create_group(driver, "group-restore", *(v.volume_id for v in vols))
    for i, member in enumerate(group.snapshots):
        restored = driver.client.controller.CreateVolume(
            restore_request(f"pvc-member-{i}", snapshot_id=member.snapshot_id,
                            caps=[block_capability()]),
            timeout=60).volume
        assert restored.capacity_bytes == member.size_bytes
        assert restored.content_source.snapshot.snapshot_id == member.snapshot_id


# --- GetVolumeGroupSnapshot ---------------------------------------------------------------


def test_get_group_requires_an_id(driver):
    expect_error(group_stub(driver).GetVolumeGroupSnapshot,
                 pb.GetVolumeGroupSnapshotRequest(),
                 Code.INVALID_ARGUMENT, "group_snapshot_id", "required")


@pytest.mark.parametrize("group_id", [unknown_group_id(), "garbage"])
def test_get_unknown_group_is_not_found(driver, group_id):
    expect_error(group_stub(driver).GetVolumeGroupSnapshot,
                 pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=group_id),
                 Code.NOT_FOUND, group_id, "does not exist")


def test_get_group_returns_what_create_did(driver, vols):
    group = _create_group(driver, "group-get", vols[0].volume_id, vols[1].volume_id)
    assert _get_group(driver, group.group_snapshot_id, _ids(group)) == group
    assert _get_group(driver, group.group_snapshot_id, reversed(_ids(group))) == group
    # csi-sanity (and older sidecars) leave snapshot_ids empty: nothing to check then.
    assert _get_group(driver, group.group_snapshot_id) == group


@pytest.mark.parametrize("mismatch", ["fewer", "foreign", "extra", "repeated"])
def test_get_group_with_mismatched_snapshot_ids_is_invalid_argument(driver, vols, mismatch):
    """The spec's "Snapshot list mismatch": INVALID_ARGUMENT."""
    group = _create_group(driver, "group-mm", vols[0].volume_id, vols[1].volume_id)
    foreign = snapshot(driver, vols[2].volume_id, "snap-foreign").snapshot_id
    ids = _ids(group)
    wrong = {"fewer": ids[:1], "foreign": [ids[0], foreign], "extra": ids + [foreign],
             "repeated": ids + ids[:1]}[mismatch]
    expect_error(group_stub(driver).GetVolumeGroupSnapshot,
                 pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=group.group_snapshot_id,
                                                  snapshot_ids=wrong),
                 Code.INVALID_ARGUMENT, group.group_snapshot_id, ids[0], ids[1])


# --- DeleteVolumeGroupSnapshot ------------------------------------------------------------


def test_delete_group_requires_an_id(driver):
    expect_error(group_stub(driver).DeleteVolumeGroupSnapshot,
                 pb.DeleteVolumeGroupSnapshotRequest(),
                 Code.INVALID_ARGUMENT, "group_snapshot_id", "required")


@pytest.mark.parametrize("group_id", [unknown_group_id(), "garbage"])
def test_delete_unknown_group_is_ok(driver, group_id):
    group_stub(driver).DeleteVolumeGroupSnapshot(
        pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group_id,
                                            snapshot_ids=["snap-" + "1" * 32]),
        timeout=30)


@pytest.mark.parametrize("mismatch", ["fewer", "foreign", "extra"])
def test_delete_group_with_mismatched_snapshot_ids_is_invalid_argument(driver, vols, mismatch):
    group = _create_group(driver, "group-dmm", vols[0].volume_id, vols[1].volume_id)
    foreign = snapshot(driver, vols[2].volume_id, "snap-foreign").snapshot_id
    ids = _ids(group)
    wrong = {"fewer": ids[:1], "foreign": [ids[0], foreign], "extra": ids + [foreign]}[mismatch]
    expect_error(group_stub(driver).DeleteVolumeGroupSnapshot,
                 pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group.group_snapshot_id,
                                                     snapshot_ids=wrong),
                 Code.INVALID_ARGUMENT, group.group_snapshot_id, ids[0], ids[1])
    # Nothing was deleted: not the group, not its members, not the foreign snapshot.
    assert _get_group(driver, group.group_snapshot_id) == group
    assert snapshot_files(driver) == {file_key(s) + ".img" for s in ids + [foreign]}


def test_delete_group_removes_it_and_its_members_idempotently(driver, vols):
    keep = snapshot(driver, vols[2].volume_id, "snap-keep")
    group = _create_group(driver, "group-del", vols[0].volume_id, vols[1].volume_id)
    request = pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group.group_snapshot_id,
                                                  snapshot_ids=list(reversed(_ids(group))))
    for _ in range(2):
        group_stub(driver).DeleteVolumeGroupSnapshot(request, timeout=30)
    assert snapshot_files(driver) == {file_key(keep.snapshot_id) + ".img"}
    assert _listed(driver) == [keep]
    expect_error(group_stub(driver).GetVolumeGroupSnapshot,
                 pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=group.group_snapshot_id),
                 Code.NOT_FOUND, group.group_snapshot_id)
    for sid in _ids(group):
        expect_error(driver.client.controller.GetSnapshot,
                     pb.GetSnapshotRequest(snapshot_id=sid), Code.NOT_FOUND, sid)
    # The name is free again.
    again = _create_group(driver, "group-del", vols[0].volume_id)
    assert again.group_snapshot_id != group.group_snapshot_id


def test_delete_group_without_snapshot_ids(driver, vols):
    """csi-sanity sends no snapshot_ids; without a list there is nothing to mismatch."""
    group = _create_group(driver, "group-noids", vols[0].volume_id)
    group_stub(driver).DeleteVolumeGroupSnapshot(
        pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group.group_snapshot_id),
        timeout=30)
    assert snapshot_files(driver) == set()

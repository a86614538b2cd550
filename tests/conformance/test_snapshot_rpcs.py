"""Snapshot RPCs against the CSI v1.12 spec, through real gRPC against a real server:
CreateSnapshot, DeleteSnapshot, ListSnapshots, GetSnapshot, and CreateVolume from a
snapshot (restore) or from a volume (clone). Every REQUIRED field, every row of each
error table, the idempotency rules, pagination and the fields a snapshot reports.

Every error is also checked for a message that names the object and the cause, and
refused calls are checked to have changed nothing."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.snapshot_ids import file_key
from csi_py.rpc.client import block_capability, mount_capability
from tests.conformance.helpers import (
    SMALL,
    XFS_MIN,
    MiB,
    create,
    expect_error,
    group_stub,
    restore_request,
    snapshot,
    snapshot_files,
    unknown_snapshot_id,
    unknown_volume_id,
    volume_files,
)

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode


def _create_snapshot(driver, request: pb.CreateSnapshotRequest) -> pb.Snapshot:
    return driver.client.controller.CreateSnapshot(request, timeout=120).snapshot


def _list(driver, **kwargs) -> pb.ListSnapshotsResponse:
    return driver.client.controller.ListSnapshots(pb.ListSnapshotsRequest(**kwargs),
                                                  timeout=30)


def _listed_ids(driver, **kwargs) -> list[str]:
    return [e.snapshot.snapshot_id for e in _list(driver, **kwargs).entries]


def _walk(driver, page_size: int, **filters) -> list[str]:
    """Every snapshot id, page by page."""
    ids: list[str] = []
    token = ""
    for _ in range(100):
        page = _list(driver, max_entries=page_size, starting_token=token, **filters)
        assert len(page.entries) <= page_size
        ids.extend(e.snapshot.snapshot_id for e in page.entries)
        token = page.next_token
        if not token:
            return ids
    raise AssertionError("ListSnapshots never ended")


def _get(driver, snapshot_id: str) -> pb.Snapshot:
    return driver.client.controller.GetSnapshot(
        pb.GetSnapshotRequest(snapshot_id=snapshot_id), timeout=30).snapshot


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


@pytest.fixture
def vol(driver) -> pb.Volume:
    return create(driver, "pvc-src")


# --- CreateSnapshot -----------------------------------------------------------------------


def test_create_snapshot_required_fields(driver, vol):
    call = driver.client.controller.CreateSnapshot
    expect_error(call, pb.CreateSnapshotRequest(source_volume_id=vol.volume_id),
                 Code.INVALID_ARGUMENT, vol.volume_id, "name", "required")
    expect_error(call, pb.CreateSnapshotRequest(name="snap-nosource"),
                 Code.INVALID_ARGUMENT, "snap-nosource", "source_volume_id", "required")
    assert snapshot_files(driver) == set()
    assert _listed_ids(driver) == []


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_create_snapshot_name_refuses_banned_characters(driver, vol, char):
    expect_error(driver.client.controller.CreateSnapshot,
                 pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=f"s{char}x"),
                 Code.INVALID_ARGUMENT, "name", "control character")
    assert snapshot_files(driver) == set()


@pytest.mark.parametrize("source", [unknown_volume_id(), "garbage", "../../etc/passwd"])
def test_create_snapshot_of_an_unknown_volume_is_not_found(driver, source):
    expect_error(driver.client.controller.CreateSnapshot,
                 pb.CreateSnapshotRequest(source_volume_id=source, name="snap-missing"),
                 Code.NOT_FOUND, source, "does not exist")
    assert snapshot_files(driver) == set()
    assert _listed_ids(driver) == []


def test_create_snapshot_refuses_unknown_parameters(driver, vol):
    request = pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="snap-params",
                                       parameters={"compress": "yes"})
    expect_error(driver.client.controller.CreateSnapshot, request,
                 Code.INVALID_ARGUMENT, "snap-params", "compress")
    assert snapshot_files(driver) == set()
    # The external-snapshotter's metadata keys are accepted and ignored.
    request.parameters.clear()
    request.parameters["csi.storage.k8s.io/volumesnapshot/name"] = "vs"
    assert _create_snapshot(driver, request).ready_to_use


def test_create_snapshot_reports_truthful_fields(driver, vol):
    before = time.time()
    snap = snapshot(driver, vol.volume_id, "snap-fields")
    after = time.time()
    assert snap.snapshot_id.startswith("snap-")
    assert snap.source_volume_id == vol.volume_id
    assert snap.size_bytes == vol.capacity_bytes == SMALL
    assert snap.ready_to_use
    assert snap.group_snapshot_id == ""
    assert before - 1 <= _seconds(snap.creation_time) <= after + 1
    assert snapshot_files(driver) == {file_key(snap.snapshot_id) + ".img"}
    image = os.path.join(driver.pool, "snapshots", file_key(snap.snapshot_id) + ".img")
    assert os.path.getsize(image) == SMALL
    # Get and List report exactly what Create did.
    assert _get(driver, snap.snapshot_id) == snap
    assert [e.snapshot for e in _list(driver).entries] == [snap]


def test_snapshot_size_follows_an_expanded_volume(driver, vol):
    small = snapshot(driver, vol.volume_id, "snap-before")
    driver.client.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id,
                                         capacity_range=pb.CapacityRange(required_bytes=48 * MiB)),
        timeout=60)
    big = snapshot(driver, vol.volume_id, "snap-after")
    assert (small.size_bytes, big.size_bytes) == (SMALL, 48 * MiB)
    assert _get(driver, small.snapshot_id).size_bytes == SMALL


def test_create_snapshot_is_idempotent(driver, vol):
    first = snapshot(driver, vol.volume_id, "snap-idem")
    second = snapshot(driver, vol.volume_id, "snap-idem")
    assert first == second  # same id, same creation_time, same size
    assert snapshot_files(driver) == {file_key(first.snapshot_id) + ".img"}
    # After a restart too: the catalog, not memory, answers.
    driver.restart()
    assert snapshot(driver, vol.volume_id, "snap-idem") == first


def test_create_snapshot_name_of_another_volume_is_already_exists(driver, vol):
    other = create(driver, "pvc-other")
    first = snapshot(driver, vol.volume_id, "snap-taken")
    expect_error(driver.client.controller.CreateSnapshot,
                 pb.CreateSnapshotRequest(source_volume_id=other.volume_id, name="snap-taken"),
                 Code.ALREADY_EXISTS, "snap-taken", first.snapshot_id, vol.volume_id,
                 other.volume_id)
    assert snapshot_files(driver) == {file_key(first.snapshot_id) + ".img"}
    assert [e.snapshot for e in _list(driver).entries] == [first]


def test_snapshots_outlive_their_source_volume(driver, vol):
    """Snapshots are independent files: the source can be deleted, the snapshot stays
    usable."""
    snap = snapshot(driver, vol.volume_id, "snap-orphan")
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                                          timeout=30)
    assert _get(driver, snap.snapshot_id) == snap
    restored = driver.client.controller.CreateVolume(
        restore_request("pvc-from-orphan", snapshot_id=snap.snapshot_id), timeout=60).volume
    assert restored.capacity_bytes == SMALL


# --- DeleteSnapshot -----------------------------------------------------------------------


def test_delete_snapshot_requires_an_id(driver):
    expect_error(driver.client.controller.DeleteSnapshot, pb.DeleteSnapshotRequest(),
                 Code.INVALID_ARGUMENT, "snapshot_id", "required")


@pytest.mark.parametrize("snapshot_id", [unknown_snapshot_id(), "garbage", "../x"])
def test_delete_unknown_snapshot_is_ok(driver, snapshot_id):
    driver.client.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot_id),
                                            timeout=30)


def test_delete_snapshot_is_idempotent_and_removes_it(driver, vol):
    keep = snapshot(driver, vol.volume_id, "snap-keep")
    gone = snapshot(driver, vol.volume_id, "snap-gone")
    for _ in range(2):
        driver.client.controller.DeleteSnapshot(
            pb.DeleteSnapshotRequest(snapshot_id=gone.snapshot_id), timeout=30)
    assert snapshot_files(driver) == {file_key(keep.snapshot_id) + ".img"}
    assert _listed_ids(driver) == [keep.snapshot_id]
    expect_error(driver.client.controller.GetSnapshot,
                 pb.GetSnapshotRequest(snapshot_id=gone.snapshot_id),
                 Code.NOT_FOUND, gone.snapshot_id, "does not exist")
    # The name is free again; a new snapshot under it is a new one.
    again = snapshot(driver, vol.volume_id, "snap-gone")
    assert again.snapshot_id != gone.snapshot_id


def test_delete_snapshot_of_a_group_member_is_invalid_argument(driver, vol):
    """The spec's "Snapshot is part of a group": INVALID_ARGUMENT, and the caller must use
    DeleteVolumeGroupSnapshot."""
    other = create(driver, "pvc-other")
    group = group_stub(driver).CreateVolumeGroupSnapshot(
        pb.CreateVolumeGroupSnapshotRequest(name="group-del",
                                            source_volume_ids=[vol.volume_id, other.volume_id]),
        timeout=120).group_snapshot
    member = group.snapshots[0]
    expect_error(driver.client.controller.DeleteSnapshot,
                 pb.DeleteSnapshotRequest(snapshot_id=member.snapshot_id),
                 Code.INVALID_ARGUMENT, member.snapshot_id, group.group_snapshot_id,
                 "DeleteVolumeGroupSnapshot")
    # Nothing changed.
    assert _get(driver, member.snapshot_id) == member
    assert snapshot_files(driver) == {file_key(s.snapshot_id) + ".img" for s in group.snapshots}


# --- GetSnapshot --------------------------------------------------------------------------


def test_get_snapshot_requires_an_id(driver):
    expect_error(driver.client.controller.GetSnapshot, pb.GetSnapshotRequest(),
                 Code.INVALID_ARGUMENT, "snapshot_id", "required")


@pytest.mark.parametrize("snapshot_id", [unknown_snapshot_id(), "garbage"])
def test_get_unknown_snapshot_is_not_found(driver, snapshot_id):
    expect_error(driver.client.controller.GetSnapshot,
                 pb.GetSnapshotRequest(snapshot_id=snapshot_id),
                 Code.NOT_FOUND, snapshot_id, "does not exist")


def test_get_snapshot_of_a_group_member_names_its_group(driver, vol):
    group = group_stub(driver).CreateVolumeGroupSnapshot(
        pb.CreateVolumeGroupSnapshotRequest(name="group-get", source_volume_ids=[vol.volume_id]),
        timeout=120).group_snapshot
    (member,) = group.snapshots
    got = _get(driver, member.snapshot_id)
    assert got == member
    assert got.group_snapshot_id == group.group_snapshot_id
    assert got.source_volume_id == vol.volume_id and got.ready_to_use


# --- ListSnapshots ------------------------------------------------------------------------


def test_list_snapshots_empty(driver):
    page = _list(driver)
    assert list(page.entries) == [] and page.next_token == ""


def test_list_snapshots_negative_max_entries_is_invalid(driver):
    expect_error(driver.client.controller.ListSnapshots,
                 pb.ListSnapshotsRequest(max_entries=-1),
                 Code.INVALID_ARGUMENT, "max_entries", "negative")


def test_list_snapshots_pages_in_a_stable_order(driver, vol):
    created = [snapshot(driver, vol.volume_id, f"snap-page-{i}").snapshot_id for i in range(5)]
    assert _listed_ids(driver) == created
    for size in (1, 2, 3, 5, 6):
        assert _walk(driver, size) == created
    first = _list(driver, max_entries=2)
    assert len(first.entries) == 2 and first.next_token
    rest = _list(driver, starting_token=first.next_token)  # no max: everything left
    assert [e.snapshot.snapshot_id for e in rest.entries] == created[2:]
    assert rest.next_token == ""


def test_list_snapshots_survives_deletions_between_pages(driver, vol):
    created = [snapshot(driver, vol.volume_id, f"snap-del-{i}").snapshot_id for i in range(5)]
    first = _list(driver, max_entries=2)
    assert [e.snapshot.snapshot_id for e in first.entries] == created[:2]
    driver.client.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=created[1]),
                                            timeout=30)
    second = _list(driver, max_entries=2, starting_token=first.next_token)
    assert [e.snapshot.snapshot_id for e in second.entries] == created[2:4]
    # A token stays valid across a restart.
    driver.restart()
    assert _list(driver, max_entries=2, starting_token=first.next_token) == second


def test_list_snapshots_filters_by_snapshot_id(driver, vol):
    a = snapshot(driver, vol.volume_id, "snap-a")
    snapshot(driver, vol.volume_id, "snap-b")
    assert [e.snapshot for e in _list(driver, snapshot_id=a.snapshot_id).entries] == [a]
    # No such snapshot: an empty answer, not an error.
    for missing in (unknown_snapshot_id(), "none-exist-id", "../x"):
        page = _list(driver, snapshot_id=missing)
        assert list(page.entries) == [] and page.next_token == ""


def test_list_snapshots_filters_by_source_volume(driver, vol):
    other = create(driver, "pvc-other")
    mine = [snapshot(driver, vol.volume_id, f"snap-mine-{i}").snapshot_id for i in range(3)]
    theirs = [snapshot(driver, other.volume_id, f"snap-theirs-{i}").snapshot_id
              for i in range(2)]
    assert _listed_ids(driver, source_volume_id=vol.volume_id) == mine
    assert _listed_ids(driver, source_volume_id=other.volume_id) == theirs
    assert _walk(driver, 2, source_volume_id=vol.volume_id) == mine
    assert _walk(driver, 1, source_volume_id=other.volume_id) == theirs
    for missing in (unknown_volume_id(), "garbage"):
        assert _listed_ids(driver, source_volume_id=missing) == []
    # Both filters: the snapshot only if it is of that volume.
    assert _listed_ids(driver, snapshot_id=mine[0], source_volume_id=vol.volume_id) == mine[:1]
    assert _listed_ids(driver, snapshot_id=mine[0], source_volume_id=other.volume_id) == []


@pytest.mark.parametrize("token", ["garbage", "-1", "1.5", " 1", "0x1", "١", "²", "0", "01",
                                   "9" * 40])
def test_list_snapshots_garbage_token_is_aborted(driver, vol, token):
    snapshot(driver, vol.volume_id, "snap-tok")
    expect_error(driver.client.controller.ListSnapshots,
                 pb.ListSnapshotsRequest(starting_token=token),
                 Code.ABORTED, repr(token), "from the start")


def test_list_snapshots_future_token_is_aborted(driver, vol):
    for i in range(3):
        snapshot(driver, vol.volume_id, f"snap-fut-{i}")
    token = _list(driver, max_entries=1).next_token
    future = str(int(token) + 1000)
    expect_error(driver.client.controller.ListSnapshots,
                 pb.ListSnapshotsRequest(max_entries=1, starting_token=future),
                 Code.ABORTED, future, "not one this driver issued")


# --- CreateVolume from a snapshot (restore) -----------------------------------------------


@pytest.mark.parametrize("snapshot_id", [unknown_snapshot_id(), "garbage"])
def test_restore_of_a_missing_snapshot_is_not_found(driver, snapshot_id):
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-restore", snapshot_id=snapshot_id),
                 Code.NOT_FOUND, "pvc-restore", "snapshot", snapshot_id, "does not exist")
    assert volume_files(driver) == set()


def test_restore_of_a_deleted_snapshot_is_not_found(driver, vol):
    snap = snapshot(driver, vol.volume_id, "snap-deleted")
    driver.client.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(
        snapshot_id=snap.snapshot_id), timeout=30)
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-restore", snapshot_id=snap.snapshot_id),
                 Code.NOT_FOUND, "pvc-restore", snap.snapshot_id)
    assert volume_files(driver) == {vol.volume_id + ".img"}


def test_restore_with_an_empty_source_is_invalid(driver, vol):
    request = restore_request("pvc-empty-src")
    request.volume_content_source.snapshot.SetInParent()
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-empty-src", "snapshot id is empty")
    request = restore_request("pvc-no-kind")
    request.volume_content_source.SetInParent()
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-no-kind", "neither a snapshot nor a volume")
    assert volume_files(driver) == {vol.volume_id + ".img"}


def test_restore_with_a_limit_below_the_snapshot_is_out_of_range(driver, vol):
    snap = snapshot(driver, vol.volume_id, "snap-big")
    request = restore_request("pvc-small", snapshot_id=snap.snapshot_id, size=16 * MiB,
                              limit=16 * MiB)
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.OUT_OF_RANGE, "pvc-small", str(16 * MiB), str(SMALL))
    assert volume_files(driver) == {vol.volume_id + ".img"}


def test_restore_smaller_than_the_snapshot_rounds_up_to_it(driver, vol):
    snap = snapshot(driver, vol.volume_id, "snap-round")
    for name, size in (("pvc-smaller", 16 * MiB), ("pvc-unset", 0)):
        restored = driver.client.controller.CreateVolume(
            restore_request(name, snapshot_id=snap.snapshot_id, size=size), timeout=60).volume
        assert restored.capacity_bytes == snap.size_bytes
        image = os.path.join(driver.pool, "volumes", restored.volume_id + ".img")
        assert os.path.getsize(image) == snap.size_bytes


def test_restore_into_a_bigger_volume(driver, vol):
    snap = snapshot(driver, vol.volume_id, "snap-grow")
    restored = driver.client.controller.CreateVolume(
        restore_request("pvc-bigger", snapshot_id=snap.snapshot_id, size=48 * MiB),
        timeout=60).volume
    assert restored.capacity_bytes == 48 * MiB
    assert os.path.getsize(os.path.join(driver.pool, "volumes",
                                        restored.volume_id + ".img")) == 48 * MiB


def test_restore_of_btrfs_into_a_bigger_volume_is_at_least_256_mib(driver):
    """The restored filesystem must grow to fill its volume, and the kernel refuses to
    resize btrfs to under 256 MiB."""
    btrfs = mount_capability("btrfs")
    vol = create(driver, "pvc-btrfs", size=128 * MiB, caps=[btrfs])
    snap = snapshot(driver, vol.volume_id, "snap-btrfs")
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-b1", snapshot_id=snap.snapshot_id, size=192 * MiB,
                                 limit=200 * MiB, caps=[btrfs]),
                 Code.OUT_OF_RANGE, "pvc-b1", "btrfs", str(256 * MiB), str(200 * MiB))
    assert volume_files(driver) == {vol.volume_id + ".img"}
    for name, size, expected in (("pvc-b2", 192 * MiB, 256 * MiB),
                                 ("pvc-b3", 0, 128 * MiB),
                                 ("pvc-b4", 300 * MiB, 300 * MiB)):
        restored = driver.client.controller.CreateVolume(
            restore_request(name, snapshot_id=snap.snapshot_id, size=size, caps=[btrfs]),
            timeout=60).volume
        assert restored.capacity_bytes == expected


def test_restore_reports_its_source_and_is_idempotent(driver, vol):
    snap = snapshot(driver, vol.volume_id, "snap-idem")
    request = restore_request("pvc-restored", snapshot_id=snap.snapshot_id)
    rsp = driver.client.controller.CreateVolume(request, timeout=60)
    assert rsp.volume.content_source.snapshot.snapshot_id == snap.snapshot_id
    again = driver.client.controller.CreateVolume(request, timeout=60)
    assert again.volume == rsp.volume
    assert len(volume_files(driver)) == 2
    # The same name from another source (or none) is incompatible.
    other = snapshot(driver, vol.volume_id, "snap-other")
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-restored", snapshot_id=other.snapshot_id),
                 Code.ALREADY_EXISTS, "pvc-restored", snap.snapshot_id, other.snapshot_id)
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-restored"),
                 Code.ALREADY_EXISTS, "pvc-restored", snap.snapshot_id)
    assert len(volume_files(driver)) == 2


def test_restore_as_another_filesystem_is_invalid(driver, vol):
    """The snapshot holds ext4: a restore that asks for xfs cannot be made from it (the
    spec's "Source incompatible")."""
    snap = snapshot(driver, vol.volume_id, "snap-ext4")
    request = restore_request("pvc-xfs", snapshot_id=snap.snapshot_id, size=XFS_MIN,
                              caps=[mount_capability("xfs")])
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-xfs", snap.snapshot_id, "ext4", "xfs")
    assert volume_files(driver) == {vol.volume_id + ".img"}


def test_restore_as_a_block_volume(driver):
    vol = create(driver, "pvc-block", caps=[block_capability()])
    snap = snapshot(driver, vol.volume_id, "snap-block")
    restored = driver.client.controller.CreateVolume(
        restore_request("pvc-block-copy", snapshot_id=snap.snapshot_id,
                        caps=[block_capability()]), timeout=60).volume
    assert restored.capacity_bytes == SMALL


# --- CreateVolume from a volume (clone) ---------------------------------------------------


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "garbage"])
def test_clone_of_a_missing_volume_is_not_found(driver, volume_id):
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-clone", volume_id=volume_id),
                 Code.NOT_FOUND, "pvc-clone", "volume", volume_id, "does not exist")
    assert volume_files(driver) == set()


def test_clone_with_a_limit_below_the_source_is_out_of_range(driver, vol):
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-clone", volume_id=vol.volume_id, size=16 * MiB,
                                 limit=16 * MiB),
                 Code.OUT_OF_RANGE, "pvc-clone", str(16 * MiB), str(SMALL))
    assert volume_files(driver) == {vol.volume_id + ".img"}


def test_clone_size_and_idempotency(driver, vol):
    request = restore_request("pvc-clone", volume_id=vol.volume_id, size=8 * MiB)
    rsp = driver.client.controller.CreateVolume(request, timeout=60)
    assert rsp.volume.capacity_bytes == SMALL  # at least the source
    assert rsp.volume.content_source.volume.volume_id == vol.volume_id
    assert driver.client.controller.CreateVolume(request, timeout=60).volume == rsp.volume
    bigger = driver.client.controller.CreateVolume(
        restore_request("pvc-clone-big", volume_id=vol.volume_id, size=40 * MiB),
        timeout=60).volume
    assert bigger.capacity_bytes == 40 * MiB
    assert len(volume_files(driver)) == 3
    # A clone is independent of its source: the source can go, the clone stays.
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                                          timeout=30)
    assert volume_files(driver) == {rsp.volume.volume_id + ".img",
                                    bigger.volume_id + ".img"}


def test_clone_as_another_filesystem_is_invalid(driver, vol):
    request = restore_request("pvc-clone-xfs", volume_id=vol.volume_id, size=XFS_MIN,
                              caps=[mount_capability("xfs")])
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-clone-xfs", vol.volume_id, "ext4", "xfs")
    assert volume_files(driver) == {vol.volume_id + ".img"}

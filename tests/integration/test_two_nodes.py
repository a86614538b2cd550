"""Two nodes, as in the distributed layout: two `csi-py serve` processes with their own
--node-id, pool and catalog on this machine. A snapshot cut on node A cannot be used
through node B's driver, which knows nothing of A's pool; its id names node A, so B
refuses restores (RESOURCE_EXHAUSTED) and deletes (FAILED_PRECONDITION) naming node A,
while A restores it with its data. Snapshots with old-style ids (no node part, cut
before ids carried one) keep working on their node."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.core import snapshots as snapshot_module
from csi_py.domain.snapshot_ids import file_key
from tests.conformance.helpers import expect_error
from tests.conftest import NODE_ID, needs_root
from tests.lifecycle import MiB, Volumes, create_request
from tests.reliability.harness import DriverProcess, payload

pytestmark = [pytest.mark.integration, needs_root()]

Code = grpc.StatusCode
A, B = "node-a", "node-b"


@pytest.fixture
def nodes(workdir):
    """Node A's and node B's drivers, each in its own process with its own pool."""
    made: dict[str, DriverProcess] = {}
    try:
        for node in (A, B):
            where = os.path.join(workdir, node[-1])
            os.mkdir(where)
            made[node] = DriverProcess(where, "--node-id", node)
            made[node].start()
        yield made
    finally:
        for proc in made.values():
            proc.stop()


def _key(driver: DriverProcess) -> str:
    info = driver.client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
    (key,) = info.accessible_topology.segments.keys()
    return key


def _on(key: str, node: str) -> pb.TopologyRequirement:
    here = pb.Topology(segments={key: node})
    return pb.TopologyRequirement(requisite=[here], preferred=[here])


def _restore(name: str, snapshot_id: str, requirement: pb.TopologyRequirement | None
             ) -> pb.CreateVolumeRequest:
    request = create_request(name, "block", 16 * MiB, snapshot_id=snapshot_id)
    if requirement is not None:
        request.accessibility_requirements.CopyFrom(requirement)
    return request


def _image(driver: DriverProcess, volume_id: str) -> str:
    return os.path.join(driver.pool, "volumes", volume_id + ".img")


def _volumes(driver: DriverProcess) -> list[str]:
    return sorted(os.listdir(os.path.join(driver.pool, "volumes")))


def _snapshot_of_written_volume(a: DriverProcess, data: bytes) -> pb.Snapshot:
    vol = Volumes(a.client).create("pvc-src", "block", 16 * MiB)
    # A block volume is a plain image until it is staged: write the data straight in.
    with open(_image(a, vol.volume_id), "r+b") as fh:
        fh.write(data)
    return Volumes(a.client).snapshot(vol.volume_id, "snap-on-a")


def test_a_restore_through_another_node_names_the_snapshots_node_and_works_there(nodes):
    a, b = nodes[A], nodes[B]
    key = _key(a)
    data = payload("two nodes")
    snap = _snapshot_of_written_volume(a, data)
    assert snap.snapshot_id.endswith("." + A)
    assert list(snap.accessible_topology) == [pb.Topology(segments={key: A})]
    # Through B, asked for B's topology (what B's external-provisioner sends) or for none.
    for requirement in (_on(key, B), None):
        expect_error(b.client.controller.CreateVolume,
                     _restore("pvc-restored", snap.snapshot_id, requirement),
                     Code.RESOURCE_EXHAUSTED, snap.snapshot_id, f"lives on node '{A}'",
                     f"not on node '{B}'", f"restore it on node '{A}'", "kubernetes.io/hostname")
    assert _volumes(b) == []
    assert not b.client.controller.ListVolumes(pb.ListVolumesRequest(), timeout=30).entries
    # Through A: the restore works and holds the data.
    restored = a.client.controller.CreateVolume(
        _restore("pvc-restored", snap.snapshot_id, _on(key, A)), timeout=120).volume
    assert list(restored.accessible_topology) == [pb.Topology(segments={key: A})]
    with open(_image(a, restored.volume_id), "rb") as fh:
        assert fh.read(len(data)) == data


def test_another_nodes_driver_neither_finds_nor_deletes_the_snapshot(nodes):
    a, b = nodes[A], nodes[B]
    snap = _snapshot_of_written_volume(a, payload("kept"))
    sid = snap.snapshot_id
    expect_error(b.client.controller.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=sid),
                 Code.NOT_FOUND, sid, f"lives on node '{A}'", B)
    assert not b.client.controller.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=sid),
                                                 timeout=30).entries
    # B must not answer OK: the CO would forget a snapshot whose data stays on A.
    expect_error(b.client.controller.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=sid),
                 Code.FAILED_PRECONDITION, sid, f"node '{A}'", "nothing was deleted")
    got = a.client.controller.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=sid),
                                          timeout=30).snapshot
    assert got.snapshot_id == sid and got.ready_to_use
    assert os.listdir(os.path.join(a.pool, "snapshots")) == [file_key(sid) + ".img"]
    # The same id with B's node part, or no node part, is no snapshot B (or A) has.
    for other in (file_key(sid) + "." + B, file_key(sid)):
        expect_error(b.client.controller.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=other),
                     Code.NOT_FOUND, other)
        expect_error(a.client.controller.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=other),
                     Code.NOT_FOUND, other)
    # A deletes it, idempotently.
    Volumes(a.client).delete_snapshot(sid)
    Volumes(a.client).delete_snapshot(sid)
    assert os.listdir(os.path.join(a.pool, "snapshots")) == []


def test_group_snapshot_members_name_their_node(nodes):
    a, b = nodes[A], nodes[B]
    va = Volumes(a.client)
    vids = [va.create(f"pvc-g{i}", "block", 16 * MiB).volume_id for i in range(2)]
    group = va.group_snapshot("group-on-a", vids)
    members = [s.snapshot_id for s in group.snapshots]
    assert all(m.endswith("." + A) for m in members)
    gb = csi_pb2_grpc.GroupControllerStub(b.client.channel)
    gid = group.group_snapshot_id
    expect_error(gb.GetVolumeGroupSnapshot,
                 pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=members),
                 Code.NOT_FOUND, gid, f"node '{A}'")
    expect_error(gb.DeleteVolumeGroupSnapshot,
                 pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=members),
                 Code.FAILED_PRECONDITION, gid, f"node '{A}'")
    assert len(os.listdir(os.path.join(a.pool, "snapshots"))) == 2
    key = _key(a)
    expect_error(b.client.controller.CreateVolume, _restore("pvc-m", members[0], _on(key, B)),
                 Code.RESOURCE_EXHAUSTED, members[0], f"restore it on node '{A}'")
    va.delete_group(gid, members)
    assert os.listdir(os.path.join(a.pool, "snapshots")) == []


def test_ids_survive_a_restart_and_a_rebuilt_catalog(nodes):
    a, b = nodes[A], nodes[B]
    key = _key(a)
    data = payload("rebuilt")
    snap = _snapshot_of_written_volume(a, data)
    a.stop()
    a.start()
    assert a.reconcile_summary()["unknown_images"] == 0
    a.stop()
    for name in os.listdir(a.pool):
        if name.startswith("catalog.db"):
            os.unlink(os.path.join(a.pool, name))
    a.start()
    summary = a.reconcile_summary()
    assert summary["unknown_images"] == 0 and summary["adopted_snapshots"] == 1
    got = a.client.controller.GetSnapshot(
        pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=30).snapshot
    assert got.snapshot_id == snap.snapshot_id
    restored = a.client.controller.CreateVolume(
        _restore("pvc-after-rebuild", snap.snapshot_id, _on(key, A)), timeout=120).volume
    with open(_image(a, restored.volume_id), "rb") as fh:
        assert fh.read(len(data)) == data
    expect_error(b.client.controller.CreateVolume,
                 _restore("pvc-after-rebuild", snap.snapshot_id, _on(key, B)),
                 Code.RESOURCE_EXHAUSTED, f"restore it on node '{A}'")


def test_old_style_ids_keep_working_on_their_node(driver, monkeypatch):
    """Snapshots cut before ids carried their node: `snap-<hex>`, with files of the same
    name. They are found, listed, restored and deleted here, survive a restart, and an
    unknown one is NOT_FOUND (the node cannot be named) and deletes as OK."""
    monkeypatch.setattr(snapshot_module, "new_snapshot_id",
                        lambda node_id: "snap-" + uuid.uuid4().hex)
    v = Volumes(driver.client)
    vid = v.create("pvc-old", "block", 16 * MiB).volume_id
    sid = v.snapshot(vid, "snap-old").snapshot_id
    assert file_key(sid) == sid
    monkeypatch.undo()
    driver.restart()
    assert driver.server.driver.last_reconcile["unknown_images"] == []  # type: ignore[index]
    c = driver.client.controller
    assert c.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=sid), timeout=30).snapshot.ready_to_use
    assert [e.snapshot.snapshot_id for e in
            c.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=sid), timeout=30).entries] == [sid]
    restored = c.CreateVolume(_restore("pvc-from-old", sid, None), timeout=120).volume
    assert os.path.exists(_image(driver, restored.volume_id))  # type: ignore[arg-type]
    # New snapshots in the same pool carry the node.
    v = Volumes(driver.client)  # the restarted driver's client
    assert v.snapshot(vid, "snap-new").snapshot_id.endswith("." + NODE_ID)
    v.delete_snapshot(sid)
    assert file_key(sid) + ".img" not in os.listdir(os.path.join(driver.pool, "snapshots"))
    unknown = "snap-" + "5" * 32
    expect_error(c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=unknown), Code.NOT_FOUND,
                 unknown)
    expect_error(c.CreateVolume, _restore("pvc-unknown", unknown, None), Code.NOT_FOUND,
                 unknown, NODE_ID, "stay on their node")
    v.delete_snapshot(unknown)  # the spec's OK for a snapshot that does not exist

"""Node-bound snapshots (CSI v1.13 SNAPSHOT_ACCESSIBILITY_CONSTRAINTS), through real gRPC
against a real server: a snapshot is a file in this node's pool, so CreateSnapshot,
GetSnapshot and ListSnapshots answer with this node's topology, CreateSnapshot refuses
accessibility_requirements it cannot meet (RESOURCE_EXHAUSTED), a restore asked for in
another topology is refused with a message naming the snapshot's node, and a restore
on the right node works and holds the snapshot's data."""

from __future__ import annotations

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conformance.helpers import (
    create,
    expect_error,
    node_session,
    restore_request,
    snapshot,
    snapshot_files,
    topology_key,
)
from tests.conftest import NODE_ID
from tests.lifecycle import BLOCK

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode


def _requirement(*segments: dict[str, str]) -> pb.TopologyRequirement:
    return pb.TopologyRequirement(requisite=[pb.Topology(segments=s) for s in segments],
                                  preferred=[pb.Topology(segments=s) for s in segments])


def test_the_capability_is_advertised(driver):
    rsp = driver.client.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(),
                                                       timeout=10)
    services = {c.service.type for c in rsp.capabilities if c.HasField("service")}
    assert pb.PluginCapability.Service.SNAPSHOT_ACCESSIBILITY_CONSTRAINTS in services


def test_snapshots_report_this_nodes_topology(driver):
    key = topology_key(driver)
    vol = create(driver, "pvc-topo")
    request = pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="snap-topo")
    request.accessibility_requirements.CopyFrom(_requirement({key: NODE_ID}))
    snap = driver.client.controller.CreateSnapshot(request, timeout=60).snapshot
    here = [pb.Topology(segments={key: NODE_ID})]
    assert list(snap.accessible_topology) == here
    got = driver.client.controller.GetSnapshot(
        pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=30).snapshot
    assert list(got.accessible_topology) == here
    listed = driver.client.controller.ListSnapshots(
        pb.ListSnapshotsRequest(snapshot_id=snap.snapshot_id), timeout=30).entries
    assert [list(e.snapshot.accessible_topology) for e in listed] == [here]
    # Without requirements the snapshot still says where it lives.
    assert list(snapshot(driver, vol.volume_id, "snap-free").accessible_topology) == here


def test_snapshot_required_elsewhere_is_resource_exhausted(driver):
    key = topology_key(driver)
    vol = create(driver, "pvc-topo-far")
    before = snapshot_files(driver)
    request = pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="snap-far")
    request.accessibility_requirements.CopyFrom(_requirement({key: "other-node"}))
    expect_error(driver.client.controller.CreateSnapshot, request, Code.RESOURCE_EXHAUSTED,
                 "snap-far", "other-node", NODE_ID)
    assert snapshot_files(driver) == before
    assert not driver.client.controller.ListSnapshots(pb.ListSnapshotsRequest(),
                                                      timeout=30).entries


def test_restore_on_another_node_is_refused_naming_the_snapshots_node(driver):
    key = topology_key(driver)
    vol = create(driver, "pvc-topo-src")
    snap = snapshot(driver, vol.volume_id, "snap-topo-src")
    request = restore_request("pvc-restore-far", snapshot_id=snap.snapshot_id)
    request.accessibility_requirements.CopyFrom(_requirement({key: "other-node"}))
    expect_error(driver.client.controller.CreateVolume, request, Code.RESOURCE_EXHAUSTED,
                 snap.snapshot_id, f"lives on node '{NODE_ID}'", "other-node",
                 f"restore it on node '{NODE_ID}'")


def test_restore_on_the_snapshots_node_works_and_holds_its_data(driver):
    key = topology_key(driver)
    vol = create(driver, "pvc-topo-data", caps=[BLOCK])
    payload = b"node-bound snapshot " * 1000
    with node_session(driver) as node:
        staging, target = driver.path("st"), driver.path("tgt")
        node.stage(vol.volume_id, staging, BLOCK)
        node.publish(vol.volume_id, staging, target, BLOCK)
        with open(target, "r+b") as fh:
            fh.write(payload)
            fh.flush()
        node.close()
        node.targets.clear()
        node.stagings.clear()
    snap = snapshot(driver, vol.volume_id, "snap-topo-data")
    request = restore_request("pvc-restore-here", snapshot_id=snap.snapshot_id, caps=[BLOCK])
    request.accessibility_requirements.CopyFrom(
        _requirement({key: "other-node"}, {key: NODE_ID}))
    restored = driver.client.controller.CreateVolume(request, timeout=60).volume
    assert list(restored.accessible_topology) == [pb.Topology(segments={key: NODE_ID})]
    with node_session(driver) as node:
        staging, target = driver.path("st2"), driver.path("tgt2")
        node.stage(restored.volume_id, staging, BLOCK)
        node.publish(restored.volume_id, staging, target, BLOCK)
        with open(target, "rb") as fh:
            assert fh.read(len(payload)) == payload


def test_restore_of_a_snapshot_from_another_nodes_pool_says_snapshots_are_node_bound(driver):
    """An old-style id (no node part) that this node does not hold: NOT_FOUND, saying
    which node was asked and that snapshots stay on their node. (Ids that name their
    node are refused naming it: tests/integration/test_two_nodes.py.)"""
    missing = "snap-" + "7" * 32
    expect_error(driver.client.controller.CreateVolume,
                 restore_request("pvc-restore-unknown", snapshot_id=missing),
                 Code.NOT_FOUND, missing, NODE_ID, "stay on their node")

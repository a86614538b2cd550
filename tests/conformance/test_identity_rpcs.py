"""Identity service against the CSI v1.12 spec, through real gRPC: GetPluginInfo,
GetPluginCapabilities, Probe (ready, initializing, missing dependency), and the services
and RPCs we do not serve yet answering UNIMPLEMENTED."""

from __future__ import annotations

import re

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.linux import filesystems
from tests.conformance.helpers import expect_error

pytestmark = pytest.mark.conformance

Cap = pb.PluginCapability
# GetPluginInfoResponse.name: domain name notation, at most 63 characters, beginning
# and ending with an alphanumeric, with dashes, dots and alphanumerics between.
PLUGIN_NAME = re.compile(r"^[a-zA-Z0-9]([-.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$")


def test_get_plugin_info_names_the_plugin(driver):
    info = driver.client.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
    assert PLUGIN_NAME.match(info.name), info.name
    assert len(info.name) <= 63
    assert info.vendor_version  # REQUIRED
    # Idempotent: the same answer every time.
    assert driver.client.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10) == info


def test_get_plugin_capabilities(driver):
    rsp = driver.client.identity.GetPluginCapabilities(
        pb.GetPluginCapabilitiesRequest(), timeout=10
    )
    services = {c.service.type for c in rsp.capabilities if c.HasField("service")}
    expansion = [c for c in rsp.capabilities if c.HasField("volume_expansion")]
    assert Cap.Service.CONTROLLER_SERVICE in services
    # Volumes live on one node, so the plugin must tell the CO where they are.
    assert Cap.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in services
    assert Cap.Service.GROUP_CONTROLLER_SERVICE in services
    # Snapshots live on one node too; changed-block tracking is served.
    assert Cap.Service.SNAPSHOT_ACCESSIBILITY_CONSTRAINTS in services
    assert Cap.Service.SNAPSHOT_METADATA_SERVICE in services
    assert [c.volume_expansion.type for c in expansion] == [Cap.VolumeExpansion.ONLINE]


def test_probe_ready(driver):
    rsp = driver.client.identity.Probe(pb.ProbeRequest(), timeout=10)
    assert rsp.HasField("ready") and rsp.ready.value is True


def test_probe_not_ready_while_initializing(driver):
    """Spec case 2 of ProbeResponse.ready: initializing but healthy -> OK with
    ready=false, and the Controller/Node services MAY fail meanwhile (we say UNAVAILABLE
    with a reason)."""
    ready = driver.server.driver._ready  # the start-up reconciliation's flag
    ready.clear()
    try:
        rsp = driver.client.identity.Probe(pb.ProbeRequest(), timeout=10)
        assert rsp.HasField("ready") and rsp.ready.value is False
        expect_error(
            driver.client.controller.ListVolumes, pb.ListVolumesRequest(),
            grpc.StatusCode.UNAVAILABLE, "reconciling", "retry",
        )
        expect_error(
            driver.client.node.NodeUnstageVolume,
            pb.NodeUnstageVolumeRequest(volume_id="vol-" + "1" * 32,
                                        staging_target_path=driver.path("s")),
            grpc.StatusCode.UNAVAILABLE, "reconciling",
        )
    finally:
        ready.set()
    assert driver.client.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value


def test_probe_missing_dependency_is_failed_precondition(driver, monkeypatch):
    """Probe Errors: "Missing required dependency" -> FAILED_PRECONDITION; the message
    names the missing tool so the operator knows what to install."""
    import csi_py.linux.exec as linux_exec

    real = linux_exec.find_tool
    monkeypatch.setattr(
        linux_exec, "find_tool", lambda name: None if name == "mkfs.xfs" else real(name)
    )
    expect_error(driver.client.identity.Probe, pb.ProbeRequest(),
                 grpc.StatusCode.FAILED_PRECONDITION, "mkfs.xfs", "missing")


@pytest.mark.parametrize("tool", filesystems.tools())
def test_probe_reports_every_tool_the_driver_runs(driver, monkeypatch, tool):
    """Each tool of the filesystem table (e2fsck too, which an offline ext4 grow runs)
    is checked by Probe: with only that one missing, Probe fails naming it.
    tests/unit/test_filesystems.py checks that the table names every tool csi_py runs."""
    import csi_py.linux.exec as linux_exec

    real = linux_exec.find_tool
    monkeypatch.setattr(linux_exec, "find_tool", lambda name: None if name == tool else real(name))
    expect_error(driver.client.identity.Probe, pb.ProbeRequest(),
                 grpc.StatusCode.FAILED_PRECONDITION, tool, "missing")
    monkeypatch.setattr(linux_exec, "find_tool", real)
    assert driver.client.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value


@pytest.mark.parametrize("method, request_type, field", [
    ("GetMetadataAllocated", pb.GetMetadataAllocatedRequest, "snapshot_id"),
    ("GetMetadataDelta", pb.GetMetadataDeltaRequest, "base_snapshot_id"),
])
def test_snapshot_metadata_service_is_served(driver, method, request_type, field):
    """SNAPSHOT_METADATA_SERVICE is advertised and its streaming RPCs answer (an empty
    request is INVALID_ARGUMENT; tests/integration/test_snapshot_metadata.py covers the
    rest)."""
    stub = csi_pb2_grpc.SnapshotMetadataStub(driver.client.channel)
    with pytest.raises(grpc.RpcError) as err:
        list(getattr(stub, method)(request_type(), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")

"""What a running driver writes to its log: request ids on every line of an RPC, and
never a secret, whatever the request and however it fails."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest

from csi_py import logs
from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import mount_capability
from tests.conformance.helpers import create_request, unknown_volume_id

SECRET = "hunter2-do-not-log-me"
SECRETS = {"password": SECRET, "token": SECRET + "-token"}


@pytest.fixture
def json_log():
    """Every csi_py log line at debug level, as the driver writes them with
    --log-format=json."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger("csi_py")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.integration
def test_secrets_never_reach_the_log_and_rpc_lines_carry_request_ids(driver, json_log, tmp_path):
    c = driver.client
    cap = mount_capability("ext4")
    request = create_request("pvc-secret", caps=[cap])
    request.secrets.update(SECRETS)
    vol = c.controller.CreateVolume(request, timeout=60).volume
    bad = create_request("pvc-bad", caps=[cap], params={"nonsense": SECRET})
    bad.secrets.update(SECRETS)
    failures = [
        (c.controller.CreateVolume, bad),
        (c.node.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id=unknown_volume_id(), staging_target_path=str(tmp_path / "staging"),
            volume_capability=cap, secrets=SECRETS)),
        (c.controller.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id="elsewhere", volume_capability=cap,
            secrets=SECRETS)),
        (c.controller.CreateSnapshot, pb.CreateSnapshotRequest(
            source_volume_id=unknown_volume_id(), name="snap\nforged", secrets=SECRETS)),
    ]
    for call, req in failures:
        with pytest.raises(grpc.RpcError):
            call(req, timeout=60)
    c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=SECRETS),
                              timeout=60)

    text = json_log.getvalue()
    assert SECRET not in text
    entries = [json.loads(line) for line in text.splitlines()]
    # Lines of the RPC layer, and what the controller logs while creating (background
    # threads such as health checks log outside any RPC, without an id).
    rpc_lines = [e for e in entries if e["logger"].startswith(("csi_py.rpc", "csi_py.server"))
                 or e["msg"].startswith("created volume")]
    # Debug level logs one line per RPC; each RPC line has the id of its RPC.
    timings = [e for e in entries if " -> " in e["msg"] and " ms" in e["msg"]]
    assert len(timings) >= 6
    assert all(e.get("requestID") for e in rpc_lines), rpc_lines
    assert len({e["requestID"] for e in timings}) == len(timings)
    created = [e for e in entries if e["msg"].startswith("created volume")]
    assert created and created[0]["requestID"] in {e["requestID"] for e in timings}


@pytest.mark.integration
def test_serve_with_log_format_json_writes_one_object_per_line(workdir):
    """The flag as the chart passes it: every stderr line of a real `csi-py serve` is a
    JSON object with Kubernetes' field names, from start-up to a graceful stop."""
    import os
    import signal
    import subprocess
    import sys

    from csi_py.rpc.client import Client

    if os.geteuid() != 0:
        pytest.skip("needs root (the driver's pool and socket checks)")
    sock = f"{workdir}/csi.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{sock}",
         "--pool", f"{workdir}/pool", "--node-id", "n1", "--log-format=json"],
        stderr=subprocess.PIPE, text=True)
    try:
        with Client(sock) as client:
            client.wait_ready(30)
            with pytest.raises(grpc.RpcError):
                client.controller.DeleteVolume(pb.DeleteVolumeRequest(), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    entries = [json.loads(line) for line in lines]  # fails on any non-JSON line
    assert any(e["msg"].startswith("serving loop.csi-py.io") for e in entries)
    assert entries[-1]["msg"] == "stopped"
    refused = [e for e in entries if "INVALID_ARGUMENT" in e["msg"]]
    assert refused and refused[0]["requestID"]
    assert all({"ts", "caller", "logger", "msg", "v"} <= set(e) for e in entries)

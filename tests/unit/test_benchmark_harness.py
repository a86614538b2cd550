"""The benchmark harness's own rules: Probe.ready unset means ready, a driver that fails to
start leaves no process behind, the reference is refused loudly, and the pool filesystem's
type comes from mountinfo (statfs cannot tell ext4 from ext2/ext3). Real processes, no
fakes; no timing is asserted (speed belongs in benchmarks/)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import harness  # noqa: E402

from csi_py._proto import csi_pb2 as pb  # noqa: E402


def test_probe_without_ready_means_ready() -> None:
    from google.protobuf.wrappers_pb2 import BoolValue

    assert harness.probe_ready(pb.ProbeResponse())
    assert harness.probe_ready(pb.ProbeResponse(ready=BoolValue(value=True)))
    assert not harness.probe_ready(pb.ProbeResponse(ready=BoolValue(value=False)))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _spec(argv: list[str]) -> harness.DriverSpec:
    return harness.DriverSpec("fake", "-", lambda _sock, _state: argv, [], False)


def test_failed_start_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The "driver" leaves two children running and exits before making a socket.
    script = f"sleep 300 & echo $! >>{pids}; sleep 300 & echo $! >>{pids}; exit 3"
    drv = harness.DriverProc(_spec(["sh", "-c", script]), str(tmp_path / "d"))
    with pytest.raises(harness.BenchError, match="exited with 3"):
        drv.start(timeout=30)
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert not any(_alive(p) for p in children), "a child of the failed driver survived"
    assert drv.proc is None


def test_driver_that_never_answers_ready_is_stopped_with_the_reason(tmp_path: Path) -> None:
    """A server answering Probe ready=false: the start fails with that reason and the
    server (and the child it spawned) are gone."""
    pid_file = tmp_path / "child.pid"
    server = tmp_path / "not_ready.py"
    server.write_text(textwrap.dedent(f"""
        import subprocess, sys
        from concurrent import futures
        import grpc
        from google.protobuf.wrappers_pb2 import BoolValue
        from csi_py._proto import csi_pb2 as pb
        child = subprocess.Popen(["sleep", "300"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        answer = grpc.unary_unary_rpc_method_handler(
            lambda _r, _c: pb.ProbeResponse(ready=BoolValue(value=False)),
            request_deserializer=pb.ProbeRequest.FromString,
            response_serializer=pb.ProbeResponse.SerializeToString)
        server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[
            grpc.method_handlers_generic_handler("csi.v1.Identity", {{"Probe": answer}})])
        server.add_insecure_port("unix:" + sys.argv[1])
        server.start()
        server.wait_for_termination()
    """))
    spec = harness.DriverSpec("not-ready", "-",
                              lambda sock, _state: [sys.executable, str(server), sock], [],
                              False)
    drv = harness.DriverProc(spec, str(tmp_path / "d"))
    with pytest.raises(harness.BenchError, match="ready=false"):
        drv.start(timeout=5)
    child = int(pid_file.read_text())
    assert not _alive(child)
    assert drv.proc is None


def test_null_server_with_ready_unset_starts_and_stops_clean(tmp_path: Path) -> None:
    """The null server answers Probe with `ready` unset: the start must take that as
    ready (it would time out otherwise), and stopping leaves its group empty."""
    null = harness.start_null(str(tmp_path), aio=False)
    pgid = null.pid
    assert harness.noop_calls(null.socket, 5)["n"] == 5
    null.stop()
    assert null.proc is None
    assert harness.group_members(pgid) == []


def test_reference_is_refused_loudly_when_absent(tmp_path: Path) -> None:
    with pytest.raises(harness.BenchError, match="REFERENCE_BIN is not set"):
        harness.reference_spec("")
    with pytest.raises(harness.BenchError, match="not an executable"):
        harness.reference_spec(str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\necho usage >&2\n")
    plain.chmod(0o755)
    with pytest.raises(harness.BenchError, match="does not look like hostpathplugin"):
        harness.reference_spec(str(plain))


_MISSING_VERSION = textwrap.dedent("""
    import sys
    if "-help" in sys.argv:
        sys.stderr.write("  -endpoint string\\n  -statedir string\\n  -nodeid string\\n")
        sys.exit(0)
    from concurrent import futures
    import grpc
    from csi_py._proto import csi_pb2 as pb

    def missing_version(_request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "Driver is missing version")

    def handler(call, req, resp):
        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=req.FromString,
            response_serializer=resp.SerializeToString)

    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[
        grpc.method_handlers_generic_handler("csi.v1.Identity", {
            "Probe": handler(lambda _r, _c: pb.ProbeResponse(), pb.ProbeRequest,
                             pb.ProbeResponse),
            "GetPluginInfo": handler(missing_version, pb.GetPluginInfoRequest,
                                     pb.GetPluginInfoResponse)})])
    server.add_insecure_port(sys.argv[sys.argv.index("-endpoint") + 1])
    server.start()
    server.wait_for_termination()
""")


def test_a_reference_that_answers_probe_but_not_its_identity_stops_the_run(
        tmp_path: Path) -> None:
    """hostpathplugin built without its version answers Probe but fails GetPluginInfo:
    the harness exits 2 with the reason and the build hint before any section, and
    writes no results file in place of the last one."""
    fake = tmp_path / "hostpathplugin"
    fake.write_text(f"#!{sys.executable}\n" + _MISSING_VERSION)
    fake.chmod(0o755)
    out = tmp_path / "latest.json"
    env = {**os.environ, "REFERENCE_BIN": str(fake), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, harness.__file__, "--sections", "lifecycle",
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "reference unavailable" in proc.stderr and "missing version" in proc.stderr
    assert "-X main.version" in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("csi-bench-")] == []


def test_filesystem_type_comes_from_mountinfo(tmp_path: Path) -> None:
    for path in (str(tmp_path), "/proc", "/"):
        expected = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", path],
                                  capture_output=True, text=True, check=True).stdout.split()
        assert harness.fs_type_of(path) == expected[-1]
    assert harness.fs_type_of("/proc") == "proc"


def test_profile_reads_handler_times_from_the_servers_own_log_lines(tmp_path: Path) -> None:
    """The line the server logs at DEBUG, formatted by the real text formatter with and
    without a request id, is what the profiler parses (it once missed every line that had
    a request id and reported "p50 None ms")."""
    import importlib.util
    import logging

    from csi_py import logs

    # benchmarks/profile.py shares its name with the standard library's profile module.
    spec = importlib.util.spec_from_file_location(
        "benchmark_profile", Path(__file__).parents[2] / "benchmarks" / "profile.py")
    assert spec is not None and spec.loader is not None
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)

    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as stream:
        handler = logs.make_handler("text", stream)
        for rid, took in (("abc-1", 0.91), ("", 1.25)):
            record = logging.LogRecord("csi_py.server", logging.DEBUG, __file__, 1,
                                       "%s -> %s in %.2f ms",
                                       ("NodePublishVolume", "OK", took), None)
            if rid:
                record.request_id = rid
            stream.write(handler.format(record) + "\n")
    assert profile.handler_times(str(log_path)) == {"NodePublishVolume": [0.91, 1.25]}

#!/usr/bin/env python3
"""Benchmark csi-py side by side with the reference driver (csi-driver-host-path).

The reference is a binary a person builds by hand (docs/benchmarks.md, "The reference")
and hands over in REFERENCE_BIN; without it the run stops and says why (or measures
csi-py alone with --no-reference, which then has no ratios). Every driver is driven over
its unix socket by the same client code (csi_py.rpc.client works against any CSI endpoint).

Sections:

  client     the harness client's own cost per call, against a null gRPC server
  lifecycle  block and mount lifecycles (create, controller publish, stage, publish,
             unpublish, unstage, controller unpublish, delete), sequential and with N
             concurrent clients, csi-py and the reference and the kernel floor (the same
             work done with the syscalls alone) in interleaved rounds; per-RPC latency
  io         fio 4 KiB random read and write inside volumes, on the pool filesystem and
             on a bare `losetup --direct-io` device
  restart    N volumes (10,000): start-up until Probe answers ready and RSS, csi-py and
             the reference interleaved; csi-py's creation and listing of all of them
  snapshots  CreateSnapshot of a 10 GiB volume holding 1 GiB on an xfs (reflink) and an
             ext4 pool, each on its own loop-mounted image

Everything lives in one private temporary directory; nothing outside it is ever
unmounted or detached, every driver runs in its own process group that is killed and
checked empty when it stops (also after a failed start), and the run fails if it leaves a
loop device, mount or process behind. Results go to benchmarks/results/latest.json;
benchmarks/report.py renders them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import grpc  # noqa: E402

from csi_py._proto import csi_pb2 as pb  # noqa: E402
from csi_py.domain.units import GiB, MiB  # noqa: E402
from csi_py.rpc.client import Client, block_capability, mount_capability  # noqa: E402

NODE_ID = "bench-node"
LIFECYCLE_RPCS = (
    "CreateVolume",
    "ControllerPublishVolume",
    "NodeStageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
    "ControllerUnpublishVolume",
    "DeleteVolume",
)


class BenchError(RuntimeError):
    """A condition that makes the run meaningless (no reference, a driver not ready)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- host state


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mountinfo() -> list[tuple[str, str, str]]:
    """(major:minor, mount point, filesystem type) of every mount, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            out.append((fields[2], _unescape(fields[4]), right.split()[0]))
    return out


def own_mounts(prefix: str) -> list[str]:
    """Mount points under `prefix`, in mount order."""
    return [mp for _dev, mp, _fs in mountinfo()
            if mp == prefix or mp.startswith(prefix + "/")]


def fs_type_of(path: str) -> str:
    """The filesystem type of the mount holding `path`, from mountinfo (statfs cannot
    tell ext2, ext3 and ext4 apart: they share one magic number)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best, best_fs = "", "unknown"
    for mdev, mp, fs in mountinfo():
        inside = real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/"
        # The last mount with the longest matching mount point wins (later mounts hide
        # earlier ones on the same point); the device number must agree.
        if inside and mdev == dev and len(mp) >= len(best):
            best, best_fs = mp, fs
    return best_fs


def own_loops(prefix: str) -> list[tuple[str, str]]:
    """(device, backing file) of loop devices whose backing file is under `prefix`."""
    found = []
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as fh:
                backing = fh.read().strip()
        except OSError:
            continue
        backing = backing.removesuffix(" (deleted)")
        if backing == prefix or backing.startswith(prefix + "/"):
            found.append((f"/dev/{name}", backing))
    return found


def leftovers(prefix: str) -> list[str]:
    return [f"mount {m}" for m in own_mounts(prefix)] + [
        f"loop {d} -> {b}" for d, b in own_loops(prefix)
    ]


def force_cleanup(prefix: str) -> None:
    """Unmount and detach what is left under `prefix` only, deepest mounts first."""
    for _ in range(4):
        mounts = own_mounts(prefix)
        loops = own_loops(prefix)
        if not mounts and not loops:
            return
        for mount_point in sorted(mounts, key=lambda p: p.count("/"), reverse=True):
            subprocess.run(["umount", mount_point], capture_output=True)
        for dev, _backing in own_loops(prefix):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        time.sleep(0.2)


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env, **kw)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp ...
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------- statistics


def summarize(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    s = sorted(samples_ms)

    def pct(p: float) -> float:
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {
        "n": len(s),
        "p50": round(pct(0.50), 3),
        "p90": round(pct(0.90), 3),
        "p99": round(pct(0.99), 3),
        "mean": round(statistics.fmean(s), 3),
        "max": round(s[-1], 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# --------------------------------------------------------------------------- drivers


@dataclass
class Kind:
    label: str
    block: bool
    fs_type: str  # what csi-py is asked for; the reference is sent "" (it ignores it)
    size: int


@dataclass
class DriverSpec:
    name: str
    version: str
    argv: Callable[[str, str], list[str]]  # (socket path, state dir) -> command line
    kinds: list[Kind]
    send_fs_type: bool  # csi-py: parameters {"fsType": ...}; reference: nothing


def probe_ready(resp: pb.ProbeResponse) -> bool:
    """The spec: a Probe answer whose `ready` is unset means ready."""
    return not resp.HasField("ready") or resp.ready.value


@dataclass
class DriverProc:
    spec: DriverSpec
    workdir: str
    proc: subprocess.Popen[bytes] | None = None
    socket: str = ""
    state: str = ""
    log_path: str = ""
    node_id: str = ""
    caps: dict[str, bool] = field(default_factory=dict)
    plugin: dict[str, str] = field(default_factory=dict)

    def start(self, state: str | None = None, timeout: float = 60.0) -> float:
        """Start the driver in its own process group; return seconds from spawn until
        Probe answers ready. On any failure the group is killed and reaped before the
        error (BenchError, with the driver's log tail) is raised."""
        os.makedirs(self.workdir, exist_ok=True)
        self.socket = os.path.join(self.workdir, "csi.sock")
        self.state = state or os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "driver.log")
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - kept open by the child
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.spec.argv(self.socket, self.state), stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True,
        )
        logf.close()
        try:
            elapsed = self._wait_ready(t0, timeout)
            self._learn()
        except BaseException:
            self.kill()
            raise
        return elapsed

    def _wait_ready(self, t0: float, timeout: float) -> float:
        assert self.proc is not None
        deadline = t0 + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.spec.name} exited with {self.proc.returncode} "
                                 f"before making its socket: {self.tail_log()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.spec.name} made no socket in {timeout:.0f} s: "
                                 f"{self.tail_log()}")
            time.sleep(0.002)
        last = "no answer yet"
        with Client(self.socket) as c:
            while True:
                try:
                    resp = c.identity.Probe(pb.ProbeRequest(), timeout=2)
                    if probe_ready(resp):
                        return time.perf_counter() - t0
                    last = "Probe answered ready=false"
                except grpc.RpcError as exc:
                    last = f"Probe failed: {exc.code().name}: {exc.details()}"
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise BenchError(f"{self.spec.name} not ready: {last}") from exc
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.spec.name} exited with {self.proc.returncode}"
                                     f" ({last}): {self.tail_log()}")
                if time.perf_counter() > deadline:
                    raise BenchError(f"{self.spec.name} not ready in {timeout:.0f} s "
                                     f"({last}): {self.tail_log()}")
                time.sleep(0.001)

    def _learn(self) -> None:
        """Read the driver's name, version, capabilities and node id. A driver that
        answers Probe but fails one of these cannot be measured: BenchError says which
        call failed and how."""
        try:
            self._ask_identity()
        except grpc.RpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
            if "missing version" in (exc.details() or ""):
                why += (" (hostpathplugin built without -ldflags \"-X main.version=<tag>\":"
                        " docs/benchmarks.md, 'The reference')")
            raise BenchError(f"{self.spec.name} answers Probe but not its identity and"
                             f" capability calls: {why}") from exc

    def _ask_identity(self) -> None:
        with Client(self.socket, timeout=30) as c:
            info = c.identity.GetPluginInfo(pb.GetPluginInfoRequest())
            self.plugin = {"name": info.name, "vendor_version": info.vendor_version}
            ctrl = c.controller.ControllerGetCapabilities(
                pb.ControllerGetCapabilitiesRequest()).capabilities
            node = c.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
            ctrl_rpcs = {x.rpc.type for x in ctrl}
            node_rpcs = {x.rpc.type for x in node}
            self.caps = {
                "attach": pb.ControllerServiceCapability.RPC.PUBLISH_UNPUBLISH_VOLUME in ctrl_rpcs,
                "stage": pb.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME in node_rpcs,
                "snapshots": pb.ControllerServiceCapability.RPC.CREATE_DELETE_SNAPSHOT
                in ctrl_rpcs,
            }
            self.node_id = c.node.NodeGetInfo(pb.NodeGetInfoRequest()).node_id

    def tail_log(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-n:].strip() or "(empty log)"
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM, wait up to 30 s, then kill; return seconds until the driver exited.
        Raises BenchError if anything of its process group is still alive after."""
        if self.proc is None:
            return 0.0
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        took = time.perf_counter() - t0
        self.kill()
        return took

    def kill(self) -> None:
        """Kill the driver's whole process group, reap it and check that it is gone."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the driver leads its own group
        for _ in range(100):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
            if not group_members(pgid):
                self.proc = None
                return
            time.sleep(0.05)
        raise BenchError(f"{self.spec.name}: processes {group_members(pgid)} of group "
                         f"{pgid} survive SIGKILL")


def csi_py_spec() -> DriverSpec:
    import compileall

    import csi_py

    # The image's `pip install` leaves the package compiled; a source tree run with
    # PYTHONDONTWRITEBYTECODE (as the image sets it) would compile every module at each
    # start and measure the compiler, not the driver. So compile it once, as pip does.
    compileall.compile_dir(os.path.dirname(csi_py.__file__), quiet=1)

    def argv(sock: str, state: str) -> list[str]:
        return [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{sock}",
                "--node-id", NODE_ID, "--pool", state]

    return DriverSpec(
        name="csi-py", version=f"{csi_py.__version__} ({git_rev()})", argv=argv,
        send_fs_type=True,
        kinds=[Kind("block", True, "", 64 * MiB), Kind("ext4", False, "ext4", 64 * MiB)],
    )


def check_starts(spec: DriverSpec, workdir: str) -> None:
    """Start the driver once, learn what it is, and stop it; BenchError (with the
    driver's reason) when it cannot be started or measured. Leaves no process."""
    drv = DriverProc(spec, workdir)
    drv.start()
    drv.stop()


def reference_spec(binary: str) -> DriverSpec:
    """The reference from REFERENCE_BIN; BenchError saying why when it cannot be used."""
    if not binary:
        raise BenchError(
            "REFERENCE_BIN is not set: build csi-driver-host-path's hostpathplugin by hand "
            "(docs/benchmarks.md, 'The reference') and run REFERENCE_BIN=/path/to/"
            "hostpathplugin benchmarks/run, or pass --no-reference to measure csi-py alone")
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        raise BenchError(f"REFERENCE_BIN={binary} is not an executable file")
    for tool in ("mount", "umount", "losetup", "fallocate"):
        if not shutil.which(tool):
            raise BenchError(f"the reference needs '{tool}' (util-linux) on PATH")
    help_text = subprocess.run([binary, "-help"], capture_output=True, text=True,
                               timeout=30).stderr
    known = set(re.findall(r"^\s+-([\w.-]+)", help_text, re.M))
    if "endpoint" not in known or "statedir" not in known:
        raise BenchError(f"REFERENCE_BIN={binary} does not look like hostpathplugin "
                         f"(its -help lists no -endpoint/-statedir)")
    wanted = ["-enable-attach=true", "-enable-topology=true", "-enable-volume-expansion=true",
              "-maxvolumespernode=0"]
    extra = [f for f in wanted if f[1:].split("=")[0] in known]

    def argv(sock: str, state: str) -> list[str]:
        return [binary, "-endpoint", f"unix://{sock}", "-nodeid", NODE_ID, "-statedir", state,
                *extra]

    return DriverSpec(
        name="reference", version="(from GetPluginInfo)", argv=argv, send_fs_type=False,
        kinds=[Kind("block", True, "", 64 * MiB), Kind("mount", False, "", 64 * MiB)],
    )


def git_rev() -> str:
    try:
        return run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- client cost


def _null_handlers(aio: bool) -> list[grpc.GenericRpcHandler]:
    info = pb.GetPluginInfoResponse(name="null.bench", vendor_version="0")

    def constant(resp: Any) -> Callable[[Any, Any], Any]:
        if aio:
            async def answer(_req: Any, _ctx: Any) -> Any:
                return resp
            return answer
        return lambda _req, _ctx: resp

    def unary(resp: Any, req: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            constant(resp), request_deserializer=req.FromString,
            response_serializer=type(resp).SerializeToString)

    return [
        grpc.method_handlers_generic_handler("csi.v1.Identity", {
            "GetPluginInfo": unary(info, pb.GetPluginInfoRequest),
            "Probe": unary(pb.ProbeResponse(), pb.ProbeRequest)}),
        grpc.method_handlers_generic_handler("csi.v1.Node", {
            "NodeGetCapabilities": unary(pb.NodeGetCapabilitiesResponse(),
                                         pb.NodeGetCapabilitiesRequest)}),
    ]


def null_server(sock: str, aio: bool) -> int:
    """A CSI Identity/Node server that does nothing (run as `harness.py --null-server
    SOCK` in a child process): what is left of a round trip to it is the client, gRPC
    and the transport. `aio`: grpc.aio (one event loop) instead of the thread-pool
    server csi-py uses, to see what the hand-off to a worker thread costs."""
    if aio:
        import asyncio

        async def serve() -> None:
            server = grpc.aio.server(handlers=_null_handlers(True))
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(server.stop(0)))
            await server.wait_for_termination()

        asyncio.run(serve())
        return 0
    server = grpc.server(cf.ThreadPoolExecutor(16), handlers=_null_handlers(False))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()
    return 0


def noop_calls(socket: str, n: int, gap_s: float = 0.0) -> dict[str, Any]:
    """GetPluginInfo n times (after 50 uncounted): wall time per call and the harness
    process's own CPU time per call (the client's cost, whatever the server is). `gap_s`:
    idle time before each call (a lifecycle's calls are not back to back: the client
    works between them, and every thread of the server goes to sleep)."""
    with Client(socket) as c:
        for _ in range(50):
            c.identity.GetPluginInfo(pb.GetPluginInfoRequest())
        samples = []
        cpu = 0.0
        for _ in range(n):
            if gap_s:
                time.sleep(gap_s)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            c.identity.GetPluginInfo(pb.GetPluginInfoRequest())
            samples.append((time.perf_counter() - t0) * 1e3)
            cpu += time.process_time() - cpu0
    out = summarize(samples)
    out["client_cpu_ms_per_call"] = round(cpu / n * 1e3, 4)
    return out


def start_null(workdir: str, aio: bool) -> DriverProc:
    name = "null-aio" if aio else "null-sync"
    spec = DriverSpec(name, "-", lambda s, _st: [sys.executable, __file__, "--null-server", s,
                                                *(["--aio"] if aio else [])], [], False)
    drv = DriverProc(spec, os.path.join(workdir, name))
    os.makedirs(drv.workdir)
    drv.socket = os.path.join(drv.workdir, "null.sock")
    drv.log_path = os.path.join(drv.workdir, "log")
    with open(drv.log_path, "ab") as logf:
        drv.proc = subprocess.Popen(spec.argv(drv.socket, ""), stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
    try:
        drv._wait_ready(time.perf_counter(), 60)
    except BaseException:
        drv.kill()
        raise
    return drv


def bench_client(workdir: str, n: int) -> dict[str, Any]:
    """The harness client against null Python gRPC servers in child processes: the
    thread-pool server (what csi-py runs) and grpc.aio; calls back to back and with 5 ms
    of idle before each."""
    out: dict[str, Any] = {}
    servers = [start_null(workdir, aio) for aio in (False, True)]
    try:
        for drv in servers:
            out[drv.spec.name] = {"back_to_back": noop_calls(drv.socket, n),
                                  "after_5ms_idle": noop_calls(drv.socket, max(n // 5, 50),
                                                               0.005)}
    finally:
        for drv in servers:
            drv.stop()
    sync = out["null-sync"]["back_to_back"]
    out.update(sync)  # the headline: the thread-pool server, back to back
    log(f"client: GetPluginInfo against a null server p50 {sync['p50']} ms, client CPU "
        f"{sync['client_cpu_ms_per_call']} ms per call; after 5 ms idle "
        f"{out['null-sync']['after_5ms_idle']['p50']} ms; grpc.aio "
        f"{out['null-aio']['back_to_back']['p50']} / "
        f"{out['null-aio']['after_5ms_idle']['p50']} ms")
    return out


# --------------------------------------------------------------------------- lifecycle


def capability(spec: DriverSpec, kind: Kind) -> pb.VolumeCapability:
    if kind.block:
        return block_capability()
    return mount_capability(kind.fs_type if spec.send_fs_type else "")


def params(spec: DriverSpec, kind: Kind) -> dict[str, str]:
    return {"fsType": kind.fs_type} if spec.send_fs_type and not kind.block else {}


class Recorder:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def timed(self, rpc: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        ms = (time.perf_counter() - t0) * 1e3
        with self.lock:
            self.samples[rpc].append(ms)
        return result


@dataclass
class Published:
    volume_id: str
    staging: str
    target: str
    publish_context: dict[str, str]


def bring_up(c: Client, drv: DriverProc, kind: Kind, name: str, rec: Recorder,
             size: int | None = None) -> Published:
    spec = drv.spec
    cap = capability(spec, kind)
    vol = rec.timed("CreateVolume", lambda: c.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=size or kind.size),
        volume_capabilities=[cap], parameters=params(spec, kind))).volume)
    vid = vol.volume_id
    pctx: dict[str, str] = {}
    if drv.caps["attach"]:
        pctx = dict(rec.timed("ControllerPublishVolume", lambda: c.controller.
                              ControllerPublishVolume(pb.ControllerPublishVolumeRequest(
                                  volume_id=vid, node_id=drv.node_id, volume_capability=cap,
                                  volume_context=vol.volume_context))).publish_context)
    staging = os.path.join(drv.workdir, "staging", name)
    target = os.path.join(drv.workdir, "targets", name)
    os.makedirs(staging, exist_ok=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if drv.caps["stage"]:
        rec.timed("NodeStageVolume", lambda: c.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap,
            publish_context=pctx, volume_context=vol.volume_context)))
    rec.timed("NodePublishVolume", lambda: c.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging if drv.caps["stage"] else "",
        target_path=target, volume_capability=cap, publish_context=pctx,
        volume_context=vol.volume_context)))
    return Published(vid, staging, target, pctx)


def tear_down(c: Client, drv: DriverProc, p: Published, rec: Recorder) -> None:
    rec.timed("NodeUnpublishVolume", lambda: c.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=p.volume_id, target_path=p.target)))
    if drv.caps["stage"]:
        rec.timed("NodeUnstageVolume", lambda: c.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=p.volume_id, staging_target_path=p.staging)))
    if drv.caps["attach"]:
        rec.timed("ControllerUnpublishVolume", lambda: c.controller.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=p.volume_id, node_id=drv.node_id)))
    rec.timed("DeleteVolume", lambda: c.controller.DeleteVolume(
        pb.DeleteVolumeRequest(volume_id=p.volume_id)))
    for path in (p.staging, p.target):
        try:
            os.rmdir(path)
        except OSError:
            pass


@dataclass
class Batch:
    """One timed batch of lifecycles: how many finished, wall seconds, raw RPC samples."""

    done: int
    seconds: float
    samples: dict[str, list[float]]
    errors: list[str]


def run_batch(one: Callable[[int, int], dict[str, float] | None], clients: int,
              per_client: int) -> Batch:
    """Run `one(worker, i)` per_client times in each of `clients` threads; `one` returns
    the RPC times of one lifecycle (ms) or raises."""
    samples: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> int:
        done = 0
        for i in range(per_client):
            try:
                times = one(w, i)
            except (grpc.RpcError, subprocess.CalledProcessError, OSError) as exc:
                detail = (f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError)
                          else str(exc))
                with lock:
                    errors.append(detail)
                return done
            with lock:
                for rpc, ms in (times or {}).items():
                    samples[rpc].append(ms)
            done += 1
        return done

    t0 = time.perf_counter()
    if clients == 1:
        done = worker(0)
    else:
        with cf.ThreadPoolExecutor(clients) as pool:
            done = sum(pool.map(worker, range(clients)))
    return Batch(done, time.perf_counter() - t0, samples, errors)


def merge(batches: list[Batch], clients: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = defaultdict(list)
    for b in batches:
        for rpc, v in b.samples.items():
            samples[rpc].extend(v)
    rounds = [round(b.done / b.seconds, 2) for b in batches if b.seconds]
    return {
        "clients": clients,
        "lifecycles": sum(b.done for b in batches),
        "per_second_rounds": rounds,
        "per_second": statistics.median(rounds) if rounds else 0.0,
        "rpc": {rpc: summarize(v) for rpc, v in samples.items()},
        "errors": [e for b in batches for e in b.errors][:5],
    }


def stop_sampler(proc: subprocess.Popen[bytes]) -> None:
    """Stop a sampling profiler or tracer (py-spy, strace) so that it writes its output:
    SIGINT, a minute to finish, then SIGKILL. Idempotent."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def csi_lifecycle(drv: DriverProc, kind: Kind, tag: str, channels: dict[int, Client]
                  ) -> Callable[[int, int], dict[str, float]]:
    """One full lifecycle of a `kind` volume through `drv`, client w on its own channel."""

    def one(w: int, i: int) -> dict[str, float]:
        if w not in channels:
            channels[w] = Client(drv.socket, timeout=120)
        c = channels[w]
        rec = Recorder()
        name = f"bench-{kind.label}-{tag}-{w}-{i}"
        tear_down(c, drv, bring_up(c, drv, kind, name, rec), rec)
        return {rpc: v[0] for rpc, v in rec.samples.items()}

    return one


# --------------------------------------------------------------------------- kernel floor
#
# The same work as a lifecycle with the syscalls alone, no driver and no catalog: a sparse
# file, a loop device set up with LOOP_CONFIGURE (direct I/O, 4 KiB logical blocks), bind
# mounts with mount(2), umount2(2), LOOP_CLR_FD. The ext4 floor adds mkfs.ext4 -b 4096 (the
# one program) and the filesystem mount and unmount of staging. Nothing a driver does for
# the same volume can take less.

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_DIRECT_IO = 16
MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount(src: str, dst: str, fstype: str | None, flags: int) -> None:
    if _libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                   None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} {dst}: {os.strerror(e)}")


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {path}: {os.strerror(e)}")


def _loop_attach(image: str) -> tuple[str, int]:
    """Attach `image` to a free loop device with direct I/O and 4 KiB blocks; (path, fd).
    Another process may take or remove the free device first: retry then."""
    backing = os.open(image, os.O_RDWR | os.O_DIRECT)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        try:
            for _ in range(50):
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                try:
                    fd = os.open(dev, os.O_RDWR)
                except OSError as exc:
                    # Another process removed or is re-creating that device: ask again.
                    if exc.errno in (errno.ENXIO, errno.ENOENT):
                        continue
                    raise
                cfg = bytearray(304)  # struct loop_config
                cfg[0:4] = backing.to_bytes(4, "little")
                cfg[4:8] = (4096).to_bytes(4, "little")
                cfg[8 + 52:8 + 56] = LO_FLAGS_DIRECT_IO.to_bytes(4, "little")
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, bytes(cfg))
                    return dev, fd
                except OSError as exc:
                    os.close(fd)
                    if exc.errno != errno.EBUSY:
                        raise
            raise OSError(errno.EBUSY, "no free loop device after 50 tries")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def floor_lifecycle(workdir: str, ext4: bool, size: int, name: str) -> dict[str, float]:
    """One lifecycle of the kernel floor: {"lifecycle": ms} and the ms of each step under
    the name of the RPC that does that work in a driver (CreateVolume: the sparse file;
    NodeStageVolume: the loop device, and for ext4 mkfs and the mount; NodePublishVolume:
    the target and the bind mount; and back)."""
    base = os.path.join(workdir, "floor")
    image = os.path.join(base, name + ".img")
    staging = os.path.join(base, "staging-" + name)
    target = os.path.join(base, "target-" + name)
    steps: dict[str, float] = {}
    t0 = last = time.perf_counter()

    def step(rpc: str) -> None:
        nonlocal last
        now = time.perf_counter()
        steps[rpc] = (now - last) * 1e3
        last = now

    fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    os.close(fd)
    step("CreateVolume")
    dev, loop_fd = _loop_attach(image)
    try:
        if ext4:
            run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E",
                 "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev])
            os.mkdir(staging)
            _mount(dev, staging, "ext4", 0)
            step("NodeStageVolume")
            os.mkdir(target)
            _mount(staging, target, None, MS_BIND)
            step("NodePublishVolume")
            _umount(target)
            os.rmdir(target)
            step("NodeUnpublishVolume")
            _umount(staging)
            os.rmdir(staging)
        else:
            step("NodeStageVolume")
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
            _mount(dev, target, None, MS_BIND)
            step("NodePublishVolume")
            _umount(target)
            os.unlink(target)
            step("NodeUnpublishVolume")
    finally:
        fcntl.ioctl(loop_fd, LOOP_CLR_FD)
        os.close(loop_fd)
    step("NodeUnstageVolume")
    os.unlink(image)
    step("DeleteVolume")
    return {"lifecycle": (time.perf_counter() - t0) * 1e3, **steps}


def bench_lifecycle(specs: list[DriverSpec], workdir: str, seq: int, clients: int,
                    per_client: int, rounds: int) -> dict[str, Any]:
    """Every driver and kind and the kernel floor, in `rounds` interleaved rounds (the
    order rotates each round) so that a burst of load from elsewhere on the machine hits
    all of them alike. Each round: `seq` sequential lifecycles, then `clients` clients
    doing `per_client` each."""
    out: dict[str, Any] = {"rounds": rounds, "seq_per_round": seq, "clients": clients,
                           "per_client_per_round": per_client, "drivers": {}}
    drivers: list[DriverProc] = []
    channels: dict[str, dict[int, Client]] = {}
    units: list[tuple[str, str, Callable[[str], Callable[[int, int], Any]]]] = []
    try:
        for spec in specs:
            drv = DriverProc(spec, os.path.join(workdir, f"lifecycle-{spec.name}"))
            drv.start()
            drivers.append(drv)
            out["drivers"][spec.name] = {"plugin": drv.plugin, "capabilities": drv.caps,
                                         "noop_rpc": noop_calls(drv.socket, 300),
                                         "noop_rpc_after_5ms_idle": noop_calls(drv.socket, 100,
                                                                               0.005)}
            for kind in spec.kinds:
                chans = channels.setdefault(f"{spec.name}/{kind.label}", {})
                units.append((spec.name, kind.label,
                              lambda tag, drv=drv, kind=kind, chans=chans:
                              csi_lifecycle(drv, kind, tag, chans)))
        os.makedirs(os.path.join(workdir, "floor"))
        for label, ext4 in (("block", False), ("ext4", True)):
            units.append(("kernel-floor", label,
                          lambda tag, ext4=ext4, label=label:
                          lambda w, i: floor_lifecycle(workdir, ext4, 64 * MiB,
                                                       f"{label}-{tag}-{w}-{i}")))
        log(f"lifecycle: {len(units)} driver/kind pairs, {rounds} interleaved rounds of "
            f"{seq} sequential + {clients}x{per_client} concurrent lifecycles")
        batches: dict[tuple[str, str], dict[str, list[Batch]]] = defaultdict(
            lambda: {"sequential": [], "concurrent": []})
        for _name, _label, make in units:
            b = run_batch(make("warm"), 1, 2)
            if b.errors:
                raise BenchError(f"{_name} {_label} warm-up failed: {b.errors[0]}")
        for r in range(rounds):
            order = units[r % len(units):] + units[:r % len(units)]
            for name, label, make in order:
                batches[(name, label)]["sequential"].append(run_batch(make(f"s{r}"), 1, seq))
                batches[(name, label)]["concurrent"].append(
                    run_batch(make(f"c{r}"), clients, per_client))
            log(f"  round {r + 1}/{rounds} done")
        results: dict[str, Any] = defaultdict(dict)
        for (name, label), modes in batches.items():
            entry = {m: merge(modes[m], 1 if m == "sequential" else clients)
                     for m in ("sequential", "concurrent")}
            results[name][label] = entry
            log(f"  {name} {label}: {entry['sequential']['per_second']}/s sequential, "
                f"{entry['concurrent']['per_second']}/s with {clients} clients"
                + (f"; ERRORS {entry['sequential']['errors'] + entry['concurrent']['errors']}"
                   if entry['sequential']['errors'] or entry['concurrent']['errors'] else ""))
        out["results"] = dict(results)
        # Ratios of the same round (neighbours in time), then their median.
        out["paired_ratios"] = paired_ratios(batches)
    finally:
        for chans in channels.values():
            for c in chans.values():
                c.close()
        for drv in drivers:
            out["drivers"].setdefault(drv.spec.name, {})["stop_seconds"] = round(drv.stop(), 3)
    return out


PAIRS = (("block", "csi-py", "block", "reference", "block"),
         ("ext4 vs directories", "csi-py", "ext4", "reference", "mount"),
         ("block vs kernel floor", "csi-py", "block", "kernel-floor", "block"),
         ("ext4 vs kernel floor", "csi-py", "ext4", "kernel-floor", "ext4"))


def paired_ratios(batches: dict[tuple[str, str], dict[str, list[Batch]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, a_drv, a_kind, b_drv, b_kind in PAIRS:
        a, b = batches.get((a_drv, a_kind)), batches.get((b_drv, b_kind))
        if not a or not b:
            continue
        entry = {}
        for mode in ("sequential", "concurrent"):
            per_round = [ratio(x.done / x.seconds, y.done / y.seconds)
                         for x, y in zip(a[mode], b[mode], strict=True) if x.seconds and y.seconds]
            vals = [v for v in per_round if v]
            entry[mode] = {"rounds": vals, "median": statistics.median(vals) if vals else None}
        out[label] = entry
    return out


# --------------------------------------------------------------------------- fio

# (label, direct I/O, logical block size, queue attributes to set): the bare loop device
# as csi-py configures it first, then one change each.
LOOP_KNOBS: tuple[tuple[str, bool, int, dict[str, str]], ...] = (
    ("bare losetup --direct-io", True, 4096, {}),
    ("bare loop, 512-byte sectors", True, 512, {}),
    ("bare loop, buffered (no direct I/O)", False, 4096, {}),
    ("bare loop, scheduler mq-deadline", True, 4096, {"scheduler": "mq-deadline"}),
    ("bare loop, rotational 0", True, 4096, {"rotational": "0"}),
    ("bare loop, nomerges 2", True, 4096, {"nomerges": "2"}),
    ("bare loop, nr_requests 32", True, 4096, {"nr_requests": "32"}),
)

FIO_JOBS = (
    ("rand_read_4k", "randread", "4k", 32),
    ("rand_write_4k", "randwrite", "4k", 32),
)


def fio_job(filename: str, size: int, runtime: int, job: tuple[str, str, str, int]
            ) -> dict[str, float]:
    name, rw, bs, depth = job
    out = run(["fio", f"--name={name}", f"--filename={filename}", f"--size={size}",
               f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}", "--direct=1",
               "--ioengine=libaio", f"--runtime={runtime}", "--time_based",
               "--numjobs=1", "--group_reporting", "--randrepeat=0", "--norandommap",
               "--output-format=json"], timeout=runtime * 10 + 120).stdout
    result = json.loads(out[out.index("{"):])["jobs"][0]
    side = result["write"] if "write" in rw else result["read"]
    clat = side.get("clat_ns", {}).get("percentile", {})
    return {
        "iops": round(side["iops"], 1),
        "clat_p50_us": round(clat.get("50.000000", 0) / 1e3, 1),
        "clat_p99_us": round(clat.get("99.000000", 0) / 1e3, 1),
    }


def fill(filename: str, size: int) -> None:
    """Write `size` bytes once, so that reads read data and not holes."""
    run(["fio", "--name=fill", f"--filename={filename}", f"--size={size}", "--rw=write",
         "--bs=1M", "--iodepth=8", "--direct=1", "--ioengine=libaio", "--end_fsync=1"],
        timeout=600)


def bench_io(specs: list[DriverSpec], workdir: str, size: int, runtime: int, rounds: int,
             knobs: bool = True) -> dict[str, Any]:
    """fio on every target, job by job and round by round: each job runs on all targets
    back to back, so a burst of load from elsewhere hits neighbours in the comparison
    alike. Every target is filled first (sequential write of the whole test size)."""
    poolfs = os.path.join(workdir, "io-poolfs")
    os.makedirs(poolfs)
    pool_type = fs_type_of(poolfs)
    out: dict[str, Any] = {"size_bytes": size, "runtime_s": runtime, "rounds": rounds,
                           "pool_fs_type": pool_type,
                           "jobs": {n: {"rw": rw, "bs": bs, "iodepth": d}
                                    for n, rw, bs, d in FIO_JOBS},
                           "targets": {}}
    vol_size = size * 2
    targets: list[tuple[str, str]] = [("pool filesystem", os.path.join(poolfs, "fio.dat"))]
    cleanups: list[Callable[[], None]] = []
    drivers: list[DriverProc] = []
    try:
        # The kernel's own limit: a loop device that losetup sets up like csi-py's
        # (direct I/O, 4 KiB logical blocks, sparse file in the same filesystem), and
        # the same with one loop queue setting changed (knobs), each on its own device.
        for label, dio, sector, queue in LOOP_KNOBS if knobs else LOOP_KNOBS[:1]:
            image = os.path.join(poolfs, f"bare-{len(targets)}.img")
            with open(image, "wb") as fh:
                fh.truncate(vol_size)
            dev = run(["losetup", "-f", "--show", f"--direct-io={'on' if dio else 'off'}",
                       "--sector-size", str(sector), image]).stdout.strip()

            def detach(dev: str = dev) -> None:
                run(["losetup", "-d", dev])

            cleanups.append(detach)
            for attr, value in queue.items():
                with open(f"/sys/block/{os.path.basename(dev)}/queue/{attr}", "w") as fh:
                    fh.write(value)
            targets.append((label, dev))
        for spec in specs:
            drv = DriverProc(spec, os.path.join(workdir, f"io-{spec.name}"))
            drv.start()
            drivers.append(drv)
            c = Client(drv.socket)
            cleanups.append(c.close)
            for kind in spec.kinds:
                if spec.name == "reference" and not kind.block:
                    continue  # a directory in the pool filesystem: that is the pool row
                p = bring_up(c, drv, kind, f"io-{kind.label}", Recorder(), size=vol_size)
                cleanups.append(lambda c=c, drv=drv, p=p: tear_down(c, drv, p, Recorder()))
                path = p.target if kind.block else os.path.join(p.target, "fio.dat")
                targets.append((f"{spec.name} {kind.label}", path))
        for label, path in targets:
            log(f"io: filling {label}")
            fill(path, size)
        for r in range(rounds):
            for job in FIO_JOBS:
                for label, path in targets:
                    log(f"io: round {r + 1} {job[0]} on {label}")
                    out["targets"].setdefault(label, {}).setdefault(job[0], []).append(
                        fio_job(path, size, runtime, job))
        for jobs in out["targets"].values():
            for name, runs in jobs.items():
                jobs[name] = {"runs": runs,
                              "iops": statistics.median(x["iops"] for x in runs),
                              "clat_p50_us": statistics.median(x["clat_p50_us"] for x in runs)}
        for _label, path in targets:
            if os.path.isfile(path):
                os.unlink(path)
    finally:
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                log(f"io cleanup: {exc}")
        for drv in drivers:
            drv.stop()
    return out


# --------------------------------------------------------------------------- restart


def reference_fill_state(drv: DriverProc, count: int) -> None:
    """Give a stopped reference `count` mount volumes. Creating them through the RPC costs
    O(volumes) each (the reference rewrites one JSON file of every volume on each change),
    so one is created through the RPC and its record, as the reference wrote it, is copied
    with fresh ids, names and directories: the file it then reads is its own format."""
    path = os.path.join(drv.state, "state.json")
    with open(path) as fh:
        state = json.load(fh)
    template = state["Volumes"][0]
    vols = []
    for i in range(count):
        v = dict(template)
        vid = f"{i:08x}-bench-0000-0000-{i:012x}"
        v["VolID"] = vid
        v["VolName"] = f"restart-{i:05d}"
        v["VolPath"] = os.path.join(os.path.dirname(template["VolPath"]), vid)
        os.makedirs(v["VolPath"], exist_ok=True)
        vols.append(v)
    shutil.rmtree(template["VolPath"], ignore_errors=True)
    state["Volumes"] = vols
    with open(path + ".tmp", "w") as fh:
        json.dump(state, fh)
    os.replace(path + ".tmp", path)


def list_all(c: Client, page: int) -> tuple[float, list[float], int]:
    pages, seen, token = [], 0, ""
    t_all = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        r = c.controller.ListVolumes(pb.ListVolumesRequest(max_entries=page,
                                                           starting_token=token))
        pages.append((time.perf_counter() - t1) * 1e3)
        seen += len(r.entries)
        token = r.next_token
        if not token:
            break
    return time.perf_counter() - t_all, pages, seen


def list_ids(socket: str, page: int) -> list[str]:
    """Every volume id, all pages."""
    ids, token = [], ""
    with Client(socket) as c:
        while True:
            r = c.controller.ListVolumes(pb.ListVolumesRequest(max_entries=page,
                                                               starting_token=token))
            ids += [e.volume.volume_id for e in r.entries]
            token = r.next_token
            if not token:
                return ids


def create_many(drv: DriverProc, kind: Kind, count: int, clients: int) -> list[float]:
    """CreateVolume restart-00000.. from `clients` clients; the latencies (ms)."""
    cap = capability(drv.spec, kind)
    latencies: list[float] = []
    lock = threading.Lock()

    def creator(w: int) -> None:
        lat = []
        with Client(drv.socket) as c:
            for i in range(w, count, clients):
                t0 = time.perf_counter()
                c.controller.CreateVolume(pb.CreateVolumeRequest(
                    name=f"restart-{i:05d}", capacity_range=pb.CapacityRange(
                        required_bytes=kind.size), volume_capabilities=[cap],
                    parameters=params(drv.spec, kind)))
                lat.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(lat)

    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(creator, range(clients)))
    return latencies


def bench_restart(specs: list[DriverSpec], workdir: str, count: int, clients: int,
                  page: int, rounds: int) -> dict[str, Any]:
    """Start-up until Probe answers ready, with an empty pool and with `count` volumes,
    every driver in turn for `rounds` rounds; RSS right after ready. csi-py's volumes are
    made through CreateVolume (16 MiB ext4, thin) by `clients` clients, listed, and
    deleted at the end."""
    out: dict[str, Any] = {"volumes": count, "clients": clients, "page_size": page,
                           "rounds": rounds, "drivers": {}}
    procs = {s.name: DriverProc(s, os.path.join(workdir, f"restart-{s.name}")) for s in specs}
    empties = {s.name: DriverProc(s, os.path.join(workdir, f"restart-empty-{s.name}"))
               for s in specs}
    try:
        for name, drv in procs.items():
            drv.start()
            res: dict[str, Any] = {}
            out["drivers"][name] = res
            kind = Kind("ext4", False, "ext4", 16 * MiB) if name == "csi-py" else \
                Kind("mount", False, "", 16 * MiB)
            if name == "reference":
                with Client(drv.socket) as c:
                    c.controller.CreateVolume(pb.CreateVolumeRequest(
                        name="restart-template", capacity_range=pb.CapacityRange(
                            required_bytes=kind.size),
                        volume_capabilities=[capability(drv.spec, kind)]))
                drv.stop()
                reference_fill_state(drv, count)
                res["volumes_made_by"] = "its own state file, one RPC-made record copied"
                continue
            log(f"restart: creating {count} volumes in csi-py with {clients} clients")
            t0 = time.perf_counter()
            latencies = create_many(drv, kind, count, clients)
            res["create_s"] = round(time.perf_counter() - t0, 3)
            res["create_per_s"] = round(count / res["create_s"], 1)
            res["create_latency_ms"] = summarize(latencies)
            with Client(drv.socket) as c:
                total, pages, seen = list_all(c, page)
            res["list_all_s"] = round(total, 3)
            res["list_page_ms"] = summarize(pages)
            res["list_seen"] = seen
            res["hwm_before_restart_kib"] = proc_status(drv.pid).get("VmHWM")
            res["stop_s"] = round(drv.stop(), 3)
            log(f"  created in {res['create_s']} s, listed in {res['list_all_s']} s")
        for r in range(rounds):
            for name in (list(procs) if r % 2 == 0 else list(reversed(procs))):
                for label, drv in (("full", procs[name]), ("empty", empties[name])):
                    took = drv.start(state=drv.state or None)
                    st = proc_status(drv.pid)
                    res = out["drivers"][name]
                    res.setdefault(f"startup_{label}_s", []).append(round(took, 4))
                    res.setdefault(f"rss_{label}_kib", []).append(st.get("VmRSS"))
                    res.setdefault(f"hwm_{label}_kib", []).append(st.get("VmHWM"))
                    if label == "full" and name == "csi-py" and r == rounds - 1:
                        with Client(drv.socket) as c:
                            total, _pages, seen = list_all(c, page)
                        res["list_all_after_restart_s"] = round(total, 3)
                        res["list_seen_after_restart"] = seen
                        res["hwm_after_list_kib"] = proc_status(drv.pid).get("VmHWM")
                    drv.stop()
            log(f"  restart round {r + 1}/{rounds} done")
        for name, res in out["drivers"].items():
            for key in [k for k in res if k.startswith(("startup_", "rss_", "hwm_"))
                        and isinstance(res[k], list)]:
                res[key + "_median"] = statistics.median(res[key])
            log(f"  {name}: start-up with {count} volumes {res['startup_full_s_median']} s "
                f"(empty {res['startup_empty_s_median']} s), RSS "
                f"{res['rss_full_kib_median']} KiB")
        if "csi-py" in procs:
            drv = procs["csi-py"]
            drv.start(state=drv.state)
            res = out["drivers"]["csi-py"]
            ids = list_ids(drv.socket, page)

            def deleter(w: int) -> None:
                with Client(drv.socket) as c:
                    for vid in ids[w::clients]:
                        c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))

            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(clients) as pool:
                list(pool.map(deleter, range(clients)))
            res["delete_s"] = round(time.perf_counter() - t0, 3)
            res["deleted"] = len(ids)
            res["left_after_delete"] = len(list_ids(drv.socket, page))
            log(f"  csi-py deleted {len(ids)} in {res['delete_s']} s, "
                f"{res['left_after_delete']} left")
    finally:
        for drv in [*procs.values(), *empties.values()]:
            drv.stop()
    return out

# --------------------------------------------------------------------------- snapshots


@dataclass
class LoopPool:
    image: str
    mount_point: str
    device: str = ""

    def create(self, fs: str, size: int) -> None:
        with open(self.image, "wb") as fh:
            fh.truncate(size)
        if fs == "xfs":
            run(["mkfs.xfs", "-q", "-m", "reflink=1", self.image])
        else:
            run(["mkfs.ext4", "-q", "-F", self.image])
        self.device = run(["losetup", "-f", "--show", self.image]).stdout.strip()
        os.makedirs(self.mount_point)
        run(["mount", self.device, self.mount_point])

    def flush(self) -> None:
        """Write back everything dirty in the pool and in its image on the host."""
        run(["sync", "-f", self.mount_point])
        fd = os.open(self.image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def used_bytes(self) -> int:
        os.sync()
        st = os.statvfs(self.mount_point)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def destroy(self) -> None:
        if os.path.ismount(self.mount_point):
            run(["umount", self.mount_point])
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = ""
        if os.path.exists(self.image):
            os.unlink(self.image)


def evict(path: str) -> None:
    """Drop `path`'s clean pages from the page cache (only this file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def bench_snapshots(workdir: str, vol_size: int, data: int, pool_size: int
                    ) -> dict[str, Any]:
    spec = csi_py_spec()
    out: dict[str, Any] = {"volume_size_bytes": vol_size, "data_bytes": data,
                           "pool_image_bytes": pool_size}
    for fs in ("xfs", "ext4"):
        base = os.path.join(workdir, f"snap-{fs}")
        os.makedirs(base)
        lp = LoopPool(os.path.join(base, "pool.img"), os.path.join(base, "mnt"))
        res: dict[str, Any] = {}
        out[f"{fs} pool"] = res
        drv = DriverProc(spec, os.path.join(base, "driver"))
        rec = Recorder()
        try:
            lp.create(fs, pool_size)
            drv.start(state=os.path.join(lp.mount_point, "pool"))
            if not drv.caps["snapshots"]:
                res["error"] = "driver does not advertise CREATE_DELETE_SNAPSHOT"
                continue
            with Client(drv.socket, timeout=600) as c:
                log(f"snapshots: {fs} pool, {vol_size >> 30} GiB volume, writing "
                    f"{data >> 30} GiB")
                p = bring_up(c, drv, Kind("ext4", False, "ext4", vol_size), f"snap-{fs}",
                             rec)
                try:
                    t0 = time.perf_counter()
                    run(["fio", "--name=fill", f"--filename={p.target}/data.bin",
                         f"--size={data}", "--rw=write", "--bs=1M", "--direct=1",
                         "--ioengine=libaio", "--iodepth=8", "--end_fsync=1"])
                    res["write_s"] = round(time.perf_counter() - t0, 3)
                    image = os.path.join(drv.state, "volumes", p.volume_id + ".img")
                    res["volume_allocated_bytes"] = allocated(image)
                    # Baseline in the same pool: coreutils cp of the same image (sparse,
                    # reflink where the filesystem can), synced like the driver's copy. The
                    # pool is a sparse image on the host, so whichever copy runs first also
                    # pays for allocating the host's blocks: one uncounted cp goes first,
                    # then the snapshot, then the counted cp.
                    def cp_baseline(lp: LoopPool = lp, image: str = image,
                                    res: dict[str, Any] = res) -> float:
                        copy = os.path.join(lp.mount_point, "cp-baseline.img")
                        lp.flush()
                        evict(image)  # cold, as the driver found it (written with O_DIRECT)
                        t0 = time.perf_counter()
                        run(["cp", "--sparse=always", "--reflink=auto", image, copy])
                        run(["sync", copy])
                        took = time.perf_counter() - t0
                        res["cp_baseline_allocated_bytes"] = allocated(copy)
                        os.unlink(copy)
                        return round(took, 4)

                    res["cp_first_touch_s"] = cp_baseline()
                    lp.flush()  # start clean: no writeback of the fill left for the snapshot
                    before = lp.used_bytes()
                    t0 = time.perf_counter()
                    snap = c.controller.CreateSnapshot(pb.CreateSnapshotRequest(
                        source_volume_id=p.volume_id, name=f"snap-{fs}-1")).snapshot
                    res["create_snapshot_s"] = round(time.perf_counter() - t0, 4)
                    after = lp.used_bytes()
                    res["ready_to_use"] = snap.ready_to_use
                    res["snapshot_size_bytes"] = snap.size_bytes
                    res["pool_used_before_bytes"] = before
                    res["pool_used_after_bytes"] = after
                    res["pool_used_delta_bytes"] = after - before
                    snap_files = [os.path.join(r, f) for r, _, fs_ in
                                  os.walk(os.path.join(drv.state, "snapshots")) for f in fs_]
                    res["snapshot_files"] = {os.path.relpath(f, drv.state): allocated(f)
                                             for f in snap_files}
                    res["snapshot_allocated_bytes"] = sum(res["snapshot_files"].values())
                    log(f"  CreateSnapshot {res['create_snapshot_s']} s, pool used "
                        f"+{(after - before) / MiB:.1f} MiB, snapshot allocates "
                        f"{res['snapshot_allocated_bytes'] / MiB:.1f} MiB")
                    t0 = time.perf_counter()
                    c.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(
                        snapshot_id=snap.snapshot_id))
                    res["delete_snapshot_s"] = round(time.perf_counter() - t0, 4)
                    res["cp_baseline_s"] = cp_baseline()
                finally:
                    tear_down(c, drv, p, rec)
        except Exception as exc:  # noqa: BLE001 - record, clean up, go on
            res["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  {fs} pool failed: {res['error']}")
        finally:
            drv.stop()
            force_cleanup(lp.mount_point)  # volumes' loops/mounts inside this pool only
            try:
                lp.destroy()
            except subprocess.CalledProcessError as exc:
                res["cleanup_error"] = exc.stderr
    return out


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    distro = ""
    try:
        with open("/etc/os-release") as fh:
            distro = dict(line.rstrip().split("=", 1) for line in fh if "=" in line).get(
                "PRETTY_NAME", "").strip('"')
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            return run(argv).stdout.strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            return "unavailable"

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "fio": version(["fio", "--version"]),
        "tmp_dir": tempfile.gettempdir(),
        "tmp_filesystem": fs_type_of(tempfile.gettempdir()),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "csi_py_version": csi_py_spec().version,
    }


# --------------------------------------------------------------------------- main

QUICK = {"seq": 3, "per_client": 1, "rounds": 2, "fio_runtime": 2, "fio_size": 32 * MiB,
         "fio_rounds": 1, "volumes": 500, "restart_rounds": 1, "client_calls": 300,
         "snapshot_volume": 1 * GiB, "snapshot_data": 128 * MiB}


def _stop_on_sigterm() -> None:
    """SIGTERM (a person's `kill`, CI stopping the job) ends the run like Ctrl-C does, so
    that every `finally` runs: drivers stopped, mounts and loop devices undone."""
    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, stop)


def main() -> int:
    _stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="client,lifecycle,io,restart,snapshots")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--quick", action="store_true",
                    help="small counts for checking the harness (results not for the docs)")
    ap.add_argument("--seq", type=int, default=8, help="sequential lifecycles per round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=2,
                    help="lifecycles per concurrent client per round")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved lifecycle rounds")
    ap.add_argument("--client-calls", type=int, default=2000)
    ap.add_argument("--fio-size", type=int, default=256 * MiB)
    ap.add_argument("--fio-runtime", type=int, default=5)
    ap.add_argument("--fio-rounds", type=int, default=2)
    ap.add_argument("--volumes", type=int, default=10_000, help="for the restart section")
    ap.add_argument("--restart-rounds", type=int, default=3)
    ap.add_argument("--page", type=int, default=500)
    ap.add_argument("--snapshot-volume", type=int, default=10 * GiB)
    ap.add_argument("--snapshot-data", type=int, default=1 * GiB)
    ap.add_argument("--no-reference", action="store_true",
                    help="measure csi-py alone (no ratios to the reference)")
    ap.add_argument("--null-server", metavar="SOCKET", help=argparse.SUPPRESS)
    ap.add_argument("--aio", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.null_server:
        return null_server(args.null_server, args.aio)
    if args.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    if os.geteuid() != 0:
        print("the benchmark needs root (loop devices, mounts)", file=sys.stderr)
        return 1
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    specs = [csi_py_spec()]
    reference: DriverSpec | None = None
    if not args.no_reference:
        try:
            reference = reference_spec(os.environ.get("REFERENCE_BIN", ""))
            specs.append(reference)
        except BenchError as exc:
            print(f"benchmark: reference unavailable: {exc}", file=sys.stderr)
            return 2

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": machine(),
        "parameters": {k: v for k, v in vars(args).items()
                       if k not in ("null_server", "aio")},
        "drivers": [s.name for s in specs],
    }
    workdir = tempfile.mkdtemp(prefix="csi-bench-")
    os.chmod(workdir, 0o700)
    log(f"workdir {workdir} ({fs_type_of(workdir)}); drivers {', '.join(results['drivers'])}")
    status = 0
    t_start = time.perf_counter()
    try:
        # A reference that starts but cannot be measured would fail every section and
        # leave a results file of n/a figures in place of the last good one.
        if reference is not None:
            try:
                check_starts(reference, os.path.join(workdir, "check-reference"))
            except BenchError as exc:
                print(f"benchmark: reference unavailable: {exc}", file=sys.stderr)
                return 2
        for section in sections:
            t0 = time.perf_counter()
            try:
                if section == "client":
                    results["client"] = bench_client(workdir, args.client_calls)
                elif section == "lifecycle":
                    results["lifecycle"] = bench_lifecycle(
                        specs, workdir, args.seq, args.clients, args.per_client, args.rounds)
                    for name, d in results["lifecycle"]["drivers"].items():
                        if name == "reference":
                            results["reference_version"] = d["plugin"].get("vendor_version")
                elif section == "io":
                    results["io"] = bench_io(specs, workdir, args.fio_size, args.fio_runtime,
                                             args.fio_rounds, knobs=not args.quick)
                elif section == "restart":
                    results["restart"] = bench_restart(specs, workdir, args.volumes,
                                                       args.clients, args.page,
                                                       args.restart_rounds)
                elif section == "snapshots":
                    results["snapshots"] = bench_snapshots(
                        workdir, args.snapshot_volume, args.snapshot_data, 16 * GiB)
                else:
                    raise ValueError(f"unknown section {section}")
            except Exception as exc:  # noqa: BLE001 - keep the other sections
                traceback.print_exc()
                results.setdefault("errors", {})[section] = f"{type(exc).__name__}: {exc}"
                log(f"section {section} FAILED: {exc}")
                status = 1
            results.setdefault("section_seconds", {})[section] = round(
                time.perf_counter() - t0, 1)
    finally:
        left = leftovers(workdir)
        results["leftovers"] = left
        if left:
            log("left behind, cleaning up: " + "; ".join(left))
            force_cleanup(workdir)
            status = 1
        still = leftovers(workdir)
        if still:
            log("COULD NOT CLEAN UP: " + "; ".join(still))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        results["total_seconds"] = round(time.perf_counter() - t_start, 1)
        results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=False)
    os.replace(args.out + ".tmp", args.out)
    log(f"wrote {args.out} ({results['total_seconds']} s)")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: everything was undone on the way out; no results were written.
        print("harness: stopped; nothing written", file=sys.stderr)
        sys.exit(130)

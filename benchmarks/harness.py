#!/usr/bin/env python3
"""Benchmark csi-py side by side with the reference driver (csi-driver-host-path).

Every driver is driven over its unix socket by the same client code
(csi_py.rpc.client works against any CSI endpoint). Sections:

  lifecycle  per-RPC latency (p50/p90/p99) and lifecycle throughput (create, controller
             publish, stage, publish, unpublish, unstage, controller unpublish, delete),
             sequential and with N concurrent clients, for each volume kind
  io         fio with O_DIRECT inside published volumes and on the pool filesystem
  scale      10,000 volumes in csi-py's catalog: create, list pages, restart, RSS, delete
  snapshots  CreateSnapshot of a 10 GiB volume holding 1 GiB on an xfs (reflink) and an
             ext4 pool, each on its own loop-mounted image

Everything lives in one private temporary directory; nothing outside it is ever
unmounted or detached, and the run fails if it leaves a loop device or mount behind.
Results go to benchmarks/results/latest.json; benchmarks/report.py renders them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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
from csi_py.rpc.client import Client, block_capability, mount_capability  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- host state


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def own_mounts(prefix: str) -> list[str]:
    """Mount points under `prefix`, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mount_point = _unescape(line.split()[4])
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return found


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


@dataclass
class DriverProc:
    spec: DriverSpec
    workdir: str
    proc: subprocess.Popen[bytes] | None = None
    socket: str = ""
    state: str = ""
    log_path: str = ""
    caps: dict[str, bool] = field(default_factory=dict)

    def start(self, state: str | None = None, timeout: float = 60.0) -> float:
        """Start the driver; return seconds from spawn until Probe is ready."""
        os.makedirs(self.workdir, exist_ok=True)
        self.socket = os.path.join(self.workdir, "csi.sock")
        self.state = state or os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "driver.log")
        logf = open(self.log_path, "ab")  # noqa: SIM115 - kept open by the child
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.spec.argv(self.socket, self.state), stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.workdir,
        )
        logf.close()
        deadline = t0 + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited: {self.tail_log()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.spec.name} made no socket: {self.tail_log()}")
            time.sleep(0.005)
        with Client(self.socket) as c:
            while True:
                try:
                    if c.identity.Probe(pb.ProbeRequest(), timeout=2).ready.value:
                        break
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                if self.proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.spec.name} not ready: {self.tail_log()}")
                time.sleep(0.002)
            elapsed = time.perf_counter() - t0
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
        return elapsed

    def tail_log(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-n:]
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


def csi_py_spec() -> DriverSpec:
    import csi_py

    def argv(sock: str, state: str) -> list[str]:
        return [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{sock}",
                "--node-id", NODE_ID, "--pool", state]

    return DriverSpec(
        name="csi-py", version=f"{csi_py.__version__} ({git_rev()})", argv=argv,
        send_fs_type=True,
        kinds=[Kind("ext4", False, "ext4", 64 * MiB), Kind("xfs", False, "xfs", 300 * MiB),
               Kind("block", True, "", 64 * MiB)],
    )


def reference_spec() -> tuple[DriverSpec | None, str]:
    env_file = os.path.join(HERE, ".work", "reference", "reference.env")
    values: dict[str, str] = {}
    if os.path.exists(env_file):
        out = subprocess.run(["bash", "-c", f"set -a; . {env_file}; env -0"],
                             capture_output=True, check=True).stdout
        for item in out.split(b"\0"):
            key, _, value = item.decode(errors="replace").partition("=")
            if key.startswith("REFERENCE_"):
                values[key] = value
    binary = values.get("REFERENCE_BIN", "")
    if not binary or not os.access(binary, os.X_OK):
        why = values.get("REFERENCE_UNAVAILABLE") or "benchmarks/setup_reference.sh was not run"
        return None, why
    help_text = subprocess.run([binary, "-help"], capture_output=True, text=True).stderr
    known = set(re.findall(r"^\s+-([\w.-]+)", help_text, re.M))
    wanted = ["-enable-attach=true", "-enable-topology=true", "-enable-volume-expansion=true",
              "-maxvolumespernode=0"]
    extra = [f for f in wanted if f[1:].split("=")[0] in known]

    def argv(sock: str, state: str) -> list[str]:
        return [binary, "-endpoint", f"unix://{sock}", "-nodeid", NODE_ID, "-statedir", state,
                *extra]

    spec = DriverSpec(
        name="reference", version=values.get("REFERENCE_VERSION", "unknown"), argv=argv,
        send_fs_type=False,
        kinds=[Kind("mount", False, "", 64 * MiB), Kind("block", True, "", 64 * MiB)],
    )
    return spec, ""


def git_rev() -> str:
    try:
        return run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
    done = sum(b.done for b in batches)
    seconds = sum(b.seconds for b in batches)
    rounds = [round(b.done / b.seconds, 2) for b in batches if b.seconds]
    return {
        "clients": clients,
        "lifecycles": done,
        "seconds": round(seconds, 3),
        "per_second": round(done / seconds, 2) if seconds else 0.0,
        "per_second_rounds": rounds,
        "per_second_median_round": statistics.median(rounds) if rounds else 0.0,
        "rpc": {rpc: summarize(samples[rpc]) for rpc in LIFECYCLE_RPCS if samples.get(rpc)},
        "errors": [e for b in batches for e in b.errors][:5],
    }


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


FLOOR_LOCK = threading.Lock()


def floor_lifecycle(workdir: str, block: bool, size: int, name: str) -> dict[str, float]:
    """The external commands csi-driver-host-path runs for one volume's lifecycle, run
    directly (no gRPC, no state file): a lower bound of the reference's own time.

    Block: CreateVolume = fallocate + `losetup -j` + `losetup -f --show`; NodePublish =
    `losetup -j` + bind mount + bind remount (k8s mount-utils); NodeUnpublish = umount;
    DeleteVolume = `losetup -j` + `losetup -d`. Mount volumes are directories: create =
    mkdir, publish = bind mount + bind remount, unpublish = umount, delete = rm -r.
    Stage, unstage and controller (un)publish only touch its state file: counted as 0.
    Like the reference, which holds one global mutex in every RPC, each step runs under
    one lock (FLOOR_LOCK), so concurrent clients interleave but never overlap.
    """
    path = os.path.join(workdir, "floor", name)
    target = os.path.join(workdir, "floor-targets", name)
    times: dict[str, float] = {}

    def t(rpc: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        with FLOOR_LOCK:
            r = fn()
        times[rpc] = (time.perf_counter() - t0) * 1e3
        return r

    if block:
        def create() -> str:
            run(["fallocate", "-l", f"{size >> 20}M", path])
            run(["losetup", "-j", path])
            return run(["losetup", "-f", "--show", path]).stdout.strip()

        dev = t("CreateVolume", create)

        def publish() -> None:
            run(["losetup", "-j", path])
            open(target, "w").close()
            run(["mount", "-o", "bind", dev, target])
            run(["mount", "-o", "bind,remount", dev, target])
    else:
        t("CreateVolume", lambda: os.makedirs(path))

        def publish() -> None:
            os.makedirs(target)
            run(["mount", "-o", "bind", path, target])
            run(["mount", "-o", "bind,remount", path, target])

    t("NodePublishVolume", publish)

    def unpublish() -> None:
        run(["umount", target])
        os.remove(target) if block else os.rmdir(target)

    t("NodeUnpublishVolume", unpublish)
    if block:
        def delete() -> None:
            run(["losetup", "-j", path])
            run(["losetup", "-d", dev])
            os.remove(path)
    else:
        def delete() -> None:
            shutil.rmtree(path)
    t("DeleteVolume", delete)
    return times


def noop_rpc(drv: DriverProc, n: int = 500) -> dict[str, Any]:
    """Latency of RPCs that do no work (GetPluginInfo, NodeGetCapabilities): the floor
    that gRPC, the client and the server's request handling put under every RPC."""
    out: dict[str, Any] = {}
    with Client(drv.socket) as c:
        for name, fn in (
                ("GetPluginInfo", lambda: c.identity.GetPluginInfo(pb.GetPluginInfoRequest())),
                ("NodeGetCapabilities",
                 lambda: c.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()))):
            rec = Recorder()
            for _ in range(50):
                fn()
            for _ in range(n):
                rec.timed(name, fn)
            out[name] = summarize(rec.samples[name])
    return out


def bench_lifecycle(specs: list[DriverSpec], workdir: str, seq_n: int, clients: int,
                    per_client: int, rounds: int) -> dict[str, Any]:
    """All drivers and kinds, interleaved in `rounds` rounds so that a burst of load from
    elsewhere on the machine hits every one of them alike."""
    out: dict[str, Any] = {}
    drivers: list[DriverProc] = []
    channels: dict[str, dict[int, Client]] = {}
    units: list[tuple[str, str, Callable[[str], Callable[[int, int], Any]]]] = []
    try:
        for spec in specs:
            drv = DriverProc(spec, os.path.join(workdir, f"lifecycle-{spec.name}"))
            drv.start()
            drivers.append(drv)
            out[spec.name] = {"_capabilities": drv.caps, "_noop_rpc": noop_rpc(drv)}
            for kind in spec.kinds:
                key = f"{spec.name}/{kind.label}"
                chans = channels.setdefault(key, {})
                units.append((spec.name, kind.label,
                              lambda tag, drv=drv, kind=kind, chans=chans:
                              csi_lifecycle(drv, kind, tag, chans)))
                out[spec.name][kind.label] = {"size_bytes": kind.size}
        if not any(s.name == "reference" for s in specs):
            os.makedirs(os.path.join(workdir, "floor"))
            os.makedirs(os.path.join(workdir, "floor-targets"))
            out["reference-floor"] = {}
            for label, block in (("mount", False), ("block", True)):
                out["reference-floor"][label] = {"size_bytes": 64 * MiB}
                units.append(("reference-floor", label,
                              lambda tag, block=block, label=label:
                              lambda w, i: floor_lifecycle(workdir, block, 64 * MiB,
                                                           f"{label}-{tag}-{w}-{i}")))
        seq_per_round = max(1, seq_n // rounds)
        conc_per_round = max(1, per_client // rounds)
        log(f"lifecycle: {len(units)} driver/kind pairs, {rounds} interleaved rounds of "
            f"{seq_per_round} sequential + {clients}x{conc_per_round} concurrent lifecycles")
        batches: dict[tuple[str, str], dict[str, list[Batch]]] = defaultdict(
            lambda: {"sequential": [], "concurrent": []})
        for _name, _label, make in units:
            run_batch(make("warm"), 1, 2)
        for r in range(rounds):
            order = units[r % len(units):] + units[:r % len(units)]
            for name, label, make in order:
                batches[(name, label)]["sequential"].append(
                    run_batch(make(f"s{r}"), 1, seq_per_round))
                batches[(name, label)]["concurrent"].append(
                    run_batch(make(f"c{r}"), clients, conc_per_round))
            log(f"  round {r + 1}/{rounds} done")
        for (name, label), modes in batches.items():
            entry = out[name][label]
            entry["sequential"] = merge(modes["sequential"], 1)
            entry["concurrent"] = merge(modes["concurrent"], clients)
            log(f"  {name} {label}: {entry['sequential']['per_second']}/s sequential, "
                f"{entry['concurrent']['per_second']}/s with {clients} clients; NodePublish "
                f"p50 {entry['sequential']['rpc'].get('NodePublishVolume', {}).get('p50')} ms"
                + (f"; ERRORS {entry['sequential']['errors'] + entry['concurrent']['errors']}"
                   if entry['sequential']['errors'] or entry['concurrent']['errors'] else ""))
    finally:
        for chans in channels.values():
            for c in chans.values():
                c.close()
        for drv in drivers:
            out[drv.spec.name]["_stop_seconds"] = round(drv.stop(), 3)
    return out


# --------------------------------------------------------------------------- fio

FIO_JOBS = (
    ("seq_write_1m", "write", "1M", 4),
    ("seq_read_1m", "read", "1M", 4),
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
        "bw_mib_s": round(side["bw_bytes"] / MiB, 1),
        "iops": round(side["iops"], 1),
        "clat_p50_us": round(clat.get("50.000000", 0) / 1e3, 1),
        "clat_p99_us": round(clat.get("99.000000", 0) / 1e3, 1),
    }


def bench_io(specs: list[DriverSpec], workdir: str, size: int, runtime: int
             ) -> dict[str, Any]:
    """fio on every target, job by job: each job runs on all targets back to back, so a
    burst of load from elsewhere on the machine hits neighbours in the comparison alike.
    Sequential write runs first everywhere, so the reads read written data."""
    out: dict[str, Any] = {"size_bytes": size, "runtime_s": runtime,
                           "jobs": {n: {"rw": rw, "bs": bs, "iodepth": d}
                                    for n, rw, bs, d in FIO_JOBS},
                           "targets": {}}
    poolfs = os.path.join(workdir, "io-poolfs")
    os.makedirs(poolfs)
    vol_size = size * 2
    targets: list[tuple[str, str]] = [
        (f"pool filesystem ({fs_type_of(poolfs)})", os.path.join(poolfs, "fio.dat"))]
    cleanups: list[Callable[[], None]] = []
    drivers: list[DriverProc] = []
    try:
        # The same kernel paths without any driver: loop devices made by losetup over a
        # file in the pool filesystem. "buffered" is what csi-driver-host-path's block
        # volumes are (fallocate + losetup, no direct I/O); "direct-io" is configured like
        # csi-py's (direct I/O, 4 KiB logical blocks, sparse file).
        for label, direct, alloc in (
                ("losetup direct-io, 4k sectors (sparse file)", True, False),
                ("reference-style block (fallocate + losetup, buffered)", False, True)):
            if any(s.name == "reference" for s in specs) and not direct:
                continue  # measured on the real reference below
            image = os.path.join(poolfs, f"loop-{len(targets)}.img")
            if alloc:
                run(["fallocate", "-l", str(vol_size), image])
            else:
                with open(image, "wb") as fh:
                    fh.truncate(vol_size)
            extra = ["--sector-size", "4096"] if direct else []
            dev = run(["losetup", "-f", "--show", f"--direct-io={'on' if direct else 'off'}",
                       *extra, image]).stdout.strip()
            def detach(dev: str = dev) -> None:
                subprocess.run(["losetup", "-d", dev], capture_output=True)

            cleanups.append(detach)
            targets.append((label, dev))
        for spec in specs:
            drv = DriverProc(spec, os.path.join(workdir, f"io-{spec.name}"))
            drv.start()
            drivers.append(drv)
            c = Client(drv.socket)
            cleanups.append(c.close)
            for kind in spec.kinds:
                if kind.label == "xfs" or (spec.name == "reference" and not kind.block):
                    continue  # one filesystem is enough; the reference's is the pool fs
                p = bring_up(c, drv, kind, f"io-{kind.label}", Recorder(), size=vol_size)
                cleanups.append(lambda c=c, drv=drv, p=p: tear_down(c, drv, p, Recorder()))
                path = p.target if kind.block else os.path.join(p.target, "fio.dat")
                targets.append((f"{spec.name} {kind.label}", path))
        for job in FIO_JOBS:
            for label, path in targets:
                log(f"io: {job[0]} on {label}")
                out["targets"].setdefault(label, {})[job[0]] = fio_job(path, size, runtime, job)
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


def fs_type_of(path: str) -> str:
    try:
        return run(["stat", "-f", "-c", "%T", path]).stdout.strip()
    except subprocess.CalledProcessError:
        return "unknown"


# --------------------------------------------------------------------------- scale


def bench_scale(workdir: str, count: int, clients: int, page: int, size: int
                ) -> dict[str, Any]:
    spec = csi_py_spec()
    kind = Kind("ext4", False, "ext4", size)
    out: dict[str, Any] = {"volumes": count, "clients": clients, "page_size": page,
                           "volume_size_bytes": size}
    # Start-up on an empty pool: the floor (interpreter, imports, socket) for comparison.
    empty = DriverProc(spec, os.path.join(workdir, "scale-empty"))
    out["startup_empty_pool_s"] = round(empty.start(), 3)
    out["rss_empty_pool_kib"] = proc_status(empty.pid).get("VmRSS")
    empty.stop()

    drv = DriverProc(spec, os.path.join(workdir, "scale"))
    drv.start()
    try:
        cap = capability(spec, kind)
        latencies: list[float] = []
        lat_lock = threading.Lock()
        ids: list[str] = []

        def creator(w: int) -> list[str]:
            made, lat = [], []
            with Client(drv.socket) as c:
                for i in range(w, count, clients):
                    t0 = time.perf_counter()
                    v = c.controller.CreateVolume(pb.CreateVolumeRequest(
                        name=f"scale-{i:05d}", capacity_range=pb.CapacityRange(
                            required_bytes=size), volume_capabilities=[cap],
                        parameters=params(spec, kind))).volume
                    lat.append((time.perf_counter() - t0) * 1e3)
                    made.append(v.volume_id)
            with lat_lock:
                latencies.extend(lat)
            return made

        log(f"scale: creating {count} volumes with {clients} clients")
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            for made in pool.map(creator, range(clients)):
                ids.extend(made)
        out["create_s"] = round(time.perf_counter() - t0, 3)
        out["create_per_s"] = round(count / out["create_s"], 1)
        out["create_latency_ms"] = summarize(latencies)
        out["rss_after_create_kib"] = proc_status(drv.pid).get("VmRSS")
        log(f"  {out['create_s']} s ({out['create_per_s']}/s); listing")

        def list_all(c: Client) -> tuple[float, list[float], int]:
            pages, seen, token = [], 0, ""
            t_all = time.perf_counter()
            while True:
                t1 = time.perf_counter()
                r = c.controller.ListVolumes(pb.ListVolumesRequest(
                    max_entries=page, starting_token=token))
                pages.append((time.perf_counter() - t1) * 1e3)
                seen += len(r.entries)
                token = r.next_token
                if not token:
                    break
            return time.perf_counter() - t_all, pages, seen

        with Client(drv.socket) as c:
            total, pages, seen = list_all(c)
        out["list_all_s"] = round(total, 3)
        out["list_pages"] = len(pages)
        out["list_page_ms"] = summarize(pages)
        out["list_seen"] = seen
        out["rss_after_list_kib"] = proc_status(drv.pid).get("VmRSS")
        out["hwm_before_restart_kib"] = proc_status(drv.pid).get("VmHWM")
        log(f"  all {len(pages)} pages in {out['list_all_s']} s; restarting")

        out["stop_s"] = round(drv.stop(), 3)
        out["startup_s"] = round(drv.start(state=drv.state), 3)
        out["rss_after_startup_kib"] = proc_status(drv.pid).get("VmRSS")
        with Client(drv.socket) as c:
            total, pages, seen = list_all(c)
        out["list_all_after_restart_s"] = round(total, 3)
        out["list_seen_after_restart"] = seen
        st = proc_status(drv.pid)
        out["rss_after_restart_list_kib"] = st.get("VmRSS")
        out["hwm_after_restart_kib"] = st.get("VmHWM")
        log(f"  start-up {out['startup_s']} s (empty pool {out['startup_empty_pool_s']} s), "
            f"RSS {out['rss_after_restart_list_kib']} KiB; deleting")

        def deleter(w: int) -> None:
            with Client(drv.socket) as c:
                for vid in ids[w::clients]:
                    c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            list(pool.map(deleter, range(clients)))
        out["delete_s"] = round(time.perf_counter() - t0, 3)
        out["delete_per_s"] = round(count / out["delete_s"], 1)
        with Client(drv.socket) as c:
            out["left_after_delete"] = len(c.controller.ListVolumes(
                pb.ListVolumesRequest()).entries)
        log(f"  deleted in {out['delete_s']} s")
    finally:
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


def machine(ref: DriverSpec | None, ref_why: str) -> dict[str, Any]:
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

    import grpc as _grpc

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
        "grpcio": _grpc.__version__,
        "fio": version(["fio", "--version"]),
        "go": version(["go", "version"]),
        "tmp_filesystem": fs_type_of(tempfile.gettempdir()),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "csi_py_version": csi_py_spec().version,
        "reference_version": ref.version if ref else None,
        "reference_unavailable": None if ref else ref_why,
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="lifecycle,io,scale,snapshots")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--seq", type=int, default=60, help="sequential lifecycles per kind")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=6, help="lifecycles per concurrent client")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds the lifecycle counts are split into")
    ap.add_argument("--fio-size", type=int, default=256 * MiB)
    ap.add_argument("--fio-runtime", type=int, default=10)
    ap.add_argument("--scale", type=int, default=10_000)
    ap.add_argument("--scale-page", type=int, default=500)
    ap.add_argument("--snapshot-volume", type=int, default=10 * GiB)
    ap.add_argument("--snapshot-data", type=int, default=1 * GiB)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the benchmark needs root (loop devices, mounts)", file=sys.stderr)
        return 1
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]

    ref, ref_why = (None, "--no-reference") if args.no_reference else reference_spec()
    specs = [csi_py_spec()] + ([ref] if ref else [])
    if not ref:
        log(f"reference driver unavailable ({ref_why}); measuring the reference floor instead")

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(ref, ref_why),
        "parameters": vars(args),
    }
    workdir = tempfile.mkdtemp(prefix="csi-bench-")
    os.chmod(workdir, 0o700)
    log(f"workdir {workdir}")
    status = 0
    t_start = time.perf_counter()
    try:
        for section in sections:
            t0 = time.perf_counter()
            try:
                if section == "lifecycle":
                    results["lifecycle"] = bench_lifecycle(
                        specs, workdir, args.seq, args.clients, args.per_client, args.rounds)
                elif section == "io":
                    results["io"] = bench_io(specs, workdir, args.fio_size, args.fio_runtime)
                elif section == "scale":
                    results["scale"] = bench_scale(workdir, args.scale, args.clients,
                                                   args.scale_page, 16 * MiB)
                elif section == "snapshots":
                    results["snapshots"] = bench_snapshots(
                        workdir, args.snapshot_volume, args.snapshot_data, 16 * GiB)
                else:
                    raise ValueError(f"unknown section {section}")
            except Exception as exc:  # noqa: BLE001 - keep the other sections
                traceback.print_exc()
                results.setdefault("errors", {})[section] = f"{type(exc).__name__}: {exc}"
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
    sys.exit(main())

#!/usr/bin/env python3
"""Profile a running csi-py with py-spy while the benchmark's own workloads drive it.

py-spy samples the driver process (wall clock: --idle keeps threads that wait on a
subprocess or a syscall), and each sample is charged to the RPC whose servicer method is
on its stack. For each RPC the report lists where its time goes: the share of its
samples in which a function is on the stack (inclusive) and at the top (self).

Scenarios (all on a private temporary pool, cleaned up like the harness):
  block      sequential lifecycles of 64 MiB block volumes
  ext4       sequential lifecycles of 64 MiB ext4 volumes (mkfs at the first stage)
  publish    NodePublishVolume/NodeUnpublishVolume of one staged ext4 volume, repeated
  snapshot   CreateSnapshot of a published ext4 volume on an ext4 pool (a sparse copy)
  startup    start-up with N volumes in the catalog (py-spy launches the driver)

Writes benchmarks/results/profile/profile.json, <scenario>.md and the
raw collapsed stacks <scenario>.collapsed.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness as h  # noqa: E402

from csi_py._proto import csi_pb2 as pb  # noqa: E402
from csi_py.rpc.client import Client  # noqa: E402

OUT = os.path.join(HERE, "results", "profile")
RATE = 500
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*)\)$")
# Frames that only route the call: they are on every stack and say nothing.
NOISE = ("grpc/_server.py", "concurrent/futures/thread.py", "threading.py",
         "grpc/_interceptor.py", "<module>", "csi_py/server.py", "csi_py/rpc/errors.py")


def py_spy() -> str | None:
    """The py-spy beside this interpreter (a virtual environment's bin/ is often not on
    PATH), else the one on PATH, else None."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


def spy_start(pid: int | None, path: str, argv: list[str] | None = None
              ) -> subprocess.Popen[bytes]:
    cmd = [py_spy() or "py-spy", "record", "--idle", "--format", "raw", "--function",
           "--rate", str(RATE), "--nonblocking", "-o", path]
    cmd += ["-p", str(pid)] if pid else ["--", *(argv or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0 if pid else 0)  # let it attach
    return proc



def parse(path: str) -> list[tuple[list[tuple[str, str]], int]]:
    """[(frames root..leaf as (function, file)), count)] from py-spy's raw output."""
    stacks = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = []
            for item in stack.split(";"):
                m = FRAME.match(item)
                if m:
                    frames.append((m.group("func"), m.group("file")))
            stacks.append((frames, int(count)))
    return stacks


def rpc_of(frames: list[tuple[str, str]]) -> str | None:
    for func, file in frames:
        name = func.rpartition(".")[2]
        if re.search(r"csi_py/rpc/(node|controller|identity)\.py", file) and name[:1].isupper():
            return name
    return None


def label(func: str, file: str) -> str:
    short = re.sub(r"^.*?/(csi_py|site-packages|python3\.\d+)/", r"\1/", file)
    return f"{func} ({short})"


def analyse(path: str, calls: dict[str, int], wall_ms: dict[str, float],
            handler: dict[str, list[float]], top: int = 10) -> dict[str, Any]:
    per_rpc: dict[str, Counter[str]] = defaultdict(Counter)
    per_rpc_self: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for frames, count in parse(path):
        rpc = rpc_of(frames)
        if rpc is None:
            if frames:
                other[label(*frames[-1])] += count
            continue
        totals[rpc] += count
        seen = set()
        for func, file in frames:
            if any(n in file for n in NOISE) or func.rpartition(".")[2] == rpc:
                continue
            key = label(func, file)
            if key not in seen:
                per_rpc[rpc][key] += count
                seen.add(key)
        if frames:
            per_rpc_self[rpc][label(*frames[-1])] += count
    result: dict[str, Any] = {}
    for rpc, n in totals.most_common():
        result[rpc] = {
            "samples": n,
            "handler_ms": h.summarize(handler.get(rpc, [])),
            "client_ms_per_call": round(wall_ms[rpc] / calls[rpc], 3) if calls.get(rpc)
            else None,
            "calls": calls.get(rpc),
            "inclusive": [(k, round(v / n, 3)) for k, v in per_rpc[rpc].most_common(top)],
            "self": [(k, round(v / n, 3)) for k, v in per_rpc_self[rpc].most_common(top)],
        }
    return result


def markdown(name: str, title: str, result: dict[str, Any], rpcs: list[str] | None = None,
             top: int = 8) -> str:
    lines = [f"### {title}", ""]
    for rpc, r in result.items():
        if rpcs and rpc not in rpcs:
            continue
        hd = r["handler_ms"]
        lines.append(f"**{rpc}**: {r['calls']} calls, {r['client_ms_per_call']} ms per call "
                     f"(mean) at the client; in the handler (the server's own timing) p50 "
                     f"{hd.get('p50')} ms, mean {hd.get('mean')} ms. The rest is gRPC, the "
                     f"server's request dispatch and the client.")
        lines.append("")
        lines.append("| function (inclusive) | share | function (self) | share |")
        lines.append("|---|---:|---|---:|")
        inc, slf = r["inclusive"][:top], r["self"][:top]
        for i in range(max(len(inc), len(slf))):
            a = inc[i] if i < len(inc) else ("", "")
            b = slf[i] if i < len(slf) else ("", "")
            fa = f"`{a[0]}`" if a[0] else ""
            fb = f"`{b[0]}`" if b[0] else ""
            lines.append(f"| {fa} | {_pct(a[1])} | {fb} | {_pct(b[1])} |")
        lines.append("")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return f"{v * 100:.0f}%" if isinstance(v, float) else ""


def debug_spec() -> h.DriverSpec:
    """csi-py at DEBUG level: its interceptor then logs each RPC's time in the handler."""
    spec = h.csi_py_spec()
    argv = spec.argv
    spec.argv = lambda sock, state: [*argv(sock, state), "--log-level", "DEBUG"]
    return spec


# The server's DEBUG line for each RPC; a request id, when there is one, stands between
# the logger's name and the colon ("csi_py.server [req=...]: NodePublishVolume -> OK in
# 0.91 ms").
HANDLER_LINE = re.compile(r"csi_py\.server(?: \[req=[^\]]*\])?: (\w+) -> \w+ in ([\d.]+) ms")


def handler_times(log_path: str) -> dict[str, list[float]]:
    """Each RPC's handler times in ms, in log order, from a csi-py log at DEBUG level.
    Raises OSError when the log cannot be read."""
    out: dict[str, list[float]] = defaultdict(list)
    with open(log_path, errors="replace") as fh:
        for line in fh:
            m = HANDLER_LINE.search(line)
            if m:
                out[m.group(1)].append(float(m.group(2)))
    return out


class Timed:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.wall: dict[str, float] = defaultdict(float)
        self.handler: dict[str, list[float]] = {}

    def add(self, rec: h.Recorder) -> None:
        for rpc, v in rec.samples.items():
            self.calls[rpc] += len(v)
            self.wall[rpc] += sum(v)
        rec.samples.clear()


def scenario_lifecycle(workdir: str, kind: h.Kind, n: int) -> tuple[str, Timed]:
    drv = h.DriverProc(debug_spec(), os.path.join(workdir, f"prof-{kind.label}"))
    drv.start()
    raw = os.path.join(OUT, f"{kind.label}.collapsed.txt")
    timed = Timed()
    try:
        spy = spy_start(drv.pid, raw)
        rec = h.Recorder()
        with Client(drv.socket) as c:
            for i in range(n):
                h.tear_down(c, drv, h.bring_up(c, drv, kind, f"prof-{i}", rec), rec)
                timed.add(rec)
        h.stop_sampler(spy)
    finally:
        drv.stop()
    timed.handler = handler_times(drv.log_path)
    return raw, timed


def scenario_publish(workdir: str, n: int) -> tuple[str, Timed]:
    drv = h.DriverProc(debug_spec(), os.path.join(workdir, "prof-publish"))
    drv.start()
    raw = os.path.join(OUT, "publish.collapsed.txt")
    timed = Timed()
    kind = h.Kind("ext4", False, "ext4", 64 * h.MiB)
    try:
        rec = h.Recorder()
        with Client(drv.socket) as c:
            p = h.bring_up(c, drv, kind, "prof-publish", rec)
            cap = h.capability(drv.spec, kind)
            rec.samples.clear()
            spy = spy_start(drv.pid, raw)
            for _ in range(n):
                rec.timed("NodeUnpublishVolume", lambda: c.node.NodeUnpublishVolume(
                    pb.NodeUnpublishVolumeRequest(volume_id=p.volume_id, target_path=p.target)))
                rec.timed("NodePublishVolume", lambda: c.node.NodePublishVolume(
                    pb.NodePublishVolumeRequest(volume_id=p.volume_id, target_path=p.target,
                                                staging_target_path=p.staging,
                                                volume_capability=cap,
                                                publish_context=p.publish_context)))
            timed.add(rec)
            h.stop_sampler(spy)
            h.tear_down(c, drv, p, h.Recorder())
    finally:
        drv.stop()
    # The last n of each: those timed under py-spy (set-up and tear-down come first/last).
    timed.handler = {k: v[-(n + 1):-1] if k in ("NodePublishVolume", "NodeUnpublishVolume")
                     else v for k, v in handler_times(drv.log_path).items()}
    return raw, timed


def scenario_snapshot(workdir: str, vol_size: int, data: int) -> tuple[str, Timed]:
    """CreateSnapshot of a published ext4 volume on an ext4 pool (no reflink: a copy)."""
    base = os.path.join(workdir, "prof-snapshot")
    os.makedirs(base)
    lp = h.LoopPool(os.path.join(base, "pool.img"), os.path.join(base, "mnt"))
    drv = h.DriverProc(debug_spec(), os.path.join(base, "driver"))
    raw = os.path.join(OUT, "snapshot.collapsed.txt")
    timed = Timed()
    try:
        lp.create("ext4", 2 * vol_size)
        drv.start(state=os.path.join(lp.mount_point, "pool"))
        rec = h.Recorder()
        with Client(drv.socket, timeout=600) as c:
            p = h.bring_up(c, drv, h.Kind("ext4", False, "ext4", vol_size), "prof-snap", rec)
            try:
                h.run(["fio", "--name=fill", f"--filename={p.target}/data.bin", f"--size={data}",
                       "--rw=write", "--bs=1M", "--direct=1", "--ioengine=libaio",
                       "--iodepth=8", "--end_fsync=1"])
                rec.samples.clear()
                spy = spy_start(drv.pid, raw)
                snap = rec.timed("CreateSnapshot", lambda: c.controller.CreateSnapshot(
                    pb.CreateSnapshotRequest(source_volume_id=p.volume_id,
                                             name="prof-snap")).snapshot)
                h.stop_sampler(spy)
                timed.add(rec)
                c.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(
                    snapshot_id=snap.snapshot_id))
            finally:
                h.tear_down(c, drv, p, h.Recorder())
    finally:
        drv.stop()
        h.force_cleanup(lp.mount_point)
        lp.destroy()
    timed.handler = {"CreateSnapshot": handler_times(drv.log_path).get("CreateSnapshot", [])}
    return raw, timed


def scenario_startup(workdir: str, volumes: int) -> tuple[str, float]:
    spec = h.csi_py_spec()
    drv = h.DriverProc(spec, os.path.join(workdir, "prof-startup"))
    drv.start()
    cap = h.capability(spec, h.Kind("ext4", False, "ext4", 16 * h.MiB))
    with Client(drv.socket) as c:
        for i in range(volumes):
            c.controller.CreateVolume(pb.CreateVolumeRequest(
                name=f"s-{i}", capacity_range=pb.CapacityRange(required_bytes=16 * h.MiB),
                volume_capabilities=[cap], parameters={"fsType": "ext4"}))
    drv.stop()
    raw = os.path.join(OUT, "startup.collapsed.txt")
    sock = drv.socket
    spy = spy_start(None, raw, spec.argv(sock, drv.state))
    t0 = time.perf_counter()
    while not os.path.exists(sock):
        time.sleep(0.005)
    with Client(sock) as c:
        c.wait_ready(60)
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)
    # Stop the driver (py-spy's child) gracefully; py-spy then writes its output.
    for line in subprocess.run(["pgrep", "-P", str(spy.pid)], capture_output=True,
                               text=True).stdout.split():
        os.kill(int(line), signal.SIGTERM)
    spy.wait(timeout=60)
    return raw, elapsed


def startup_markdown(raw: str, elapsed: float, volumes: int, top: int = 12) -> str:
    inc: Counter[str] = Counter()
    total = 0
    for frames, count in parse(raw):
        # The main thread only: start-up is serial there.
        if not frames or not any(f == "<module>" for f, _ in frames[:3]):
            continue
        total += count
        seen = set()
        for func, file in frames:
            key = label(func, file)
            if key not in seen and "<module>" not in key and "runpy" not in file:
                inc[key] += count
                seen.add(key)
    lines = [f"### Start-up with {volumes:,} volumes", "",
             f"{elapsed:.2f} s from spawn until Probe answers ready, under py-spy. Main-thread "
             f"samples: {total}.", "", "| function (inclusive) | share |", "|---|---:|"]
    for k, v in inc.most_common(top):
        lines.append(f"| `{k}` | {v / total * 100:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="block,ext4,publish")
    ap.add_argument("-n", type=int, default=60, help="lifecycles per lifecycle scenario")
    ap.add_argument("--publish-n", type=int, default=300)
    ap.add_argument("--startup-volumes", type=int, default=10_000)
    args = ap.parse_args()
    if py_spy() is None:
        print("profile: py-spy is missing (pip install py-spy)", file=sys.stderr)
        return 1
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="csi-prof-")
    os.chmod(workdir, 0o700)
    sections: list[str] = []
    data: dict[str, Any] = {"rate_hz": RATE}
    try:
        for sc in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            h.log(f"profile: {sc}")
            if sc in ("block", "ext4"):
                kind = (h.Kind("block", True, "", 64 * h.MiB) if sc == "block"
                        else h.Kind("ext4", False, "ext4", 64 * h.MiB))
                raw, t = scenario_lifecycle(workdir, kind, args.n)
                res = analyse(raw, t.calls, t.wall, t.handler)
                md = markdown(sc, f"{sc} volume lifecycle ({args.n} sequential)", res)
            elif sc == "publish":
                raw, t = scenario_publish(workdir, args.publish_n)
                res = analyse(raw, t.calls, t.wall, t.handler)
                md = markdown(sc, f"NodePublishVolume/NodeUnpublishVolume of a staged ext4 "
                                  f"volume ({args.publish_n} each)", res)
            elif sc == "snapshot":
                raw, t = scenario_snapshot(workdir, 4 * h.GiB, 512 * h.MiB)
                res = analyse(raw, t.calls, t.wall, t.handler, top=14)
                md = markdown(sc, "CreateSnapshot of a published 4 GiB ext4 volume holding "
                                  "512 MiB, on an ext4 pool (sparse copy)", res,
                              rpcs=["CreateSnapshot"], top=12)
            elif sc == "startup":
                raw, elapsed = scenario_startup(workdir, args.startup_volumes)
                res = {"elapsed_s": round(elapsed, 3)}
                md = startup_markdown(raw, elapsed, args.startup_volumes)
            else:
                raise SystemExit(f"unknown scenario {sc}")
            data[sc] = res
            sections.append(md)
            with open(os.path.join(OUT, f"{sc}.md"), "w") as fh:
                fh.write(md)
    finally:
        left = h.leftovers(workdir)
        if left:
            h.log("left behind, cleaning up: " + "; ".join(left))
            h.force_cleanup(workdir)
        if not h.leftovers(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    version = subprocess.run([py_spy() or "py-spy", "--version"], capture_output=True,
                             text=True).stdout
    data["markdown"] = (
        f"{version.strip()} sampled the driver at {RATE} Hz, wall clock (idle threads "
        f"included, so time spent waiting for a subprocess or a syscall counts). Each "
        f"sample is charged to the RPC whose "
        f"servicer is on its stack. Inclusive: share of that RPC's samples with the function on "
        f"the stack; self: share with it at the top. Raw stacks (git-ignored): "
        f"`benchmarks/results/profile/*.collapsed.txt`.\n\n" + "\n".join(sections))
    with open(os.path.join(OUT, "profile.json"), "w") as fh:
        json.dump(data, fh, indent=1)
    h.log(f"profile: wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

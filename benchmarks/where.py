#!/usr/bin/env python3
"""Where csi-py's time goes, and why more clients are not faster: py-spy and strace on a
running csi-py while the harness drives block-volume lifecycles.

  benchmarks/where.py [--lifecycles 60] [--clients 8] [--startup-volumes 10000]

For one client and for N clients, two py-spy recordings of the server (each on its own
run of lifecycles):
  --idle  wall clock of every thread, also while it waits (a lock, a syscall, the disk):
          the RPC worker threads' time sorted into buckets (catalog lock wait, SQLite
          commit, fsync, sysfs scans, mountinfo, gRPC send and receive, ...), and the
          average number of RPCs in progress in the server
  --gil   only the thread holding the GIL: how much of the wall clock the interpreter
          lock is held at all (if it is far below 100%, the GIL is not what serializes)
strace -f counts the syscalls of one lifecycle (opens of sysfs files, TCGETS, fsyncs).
Start-up with --startup-volumes volumes under py-spy (the main thread's time).

Writes benchmarks/results/profile/where.json and where.md; raw stacks go to
benchmarks/results/profile/*.raw.txt (git-ignored). Needs root and py-spy and strace.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness as h  # noqa: E402

from csi_py._proto import csi_pb2 as pb  # noqa: E402
from csi_py.rpc.client import Client  # noqa: E402

OUT = os.path.join(HERE, "results", "profile")
RATE = 400
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
BLOCK = h.Kind("block", True, "", 64 * h.MiB)


def parse(path: str) -> list[tuple[list[tuple[str, str, int]], int]]:
    """py-spy raw output: [(frames root..leaf as (function, file, line), count)]."""
    stacks = []
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = []
            for item in stack.split(";"):
                m = FRAME.match(item)
                if m:
                    frames.append((m.group("func"), m.group("file"), int(m.group("line") or 0)))
            stacks.append((frames, int(count)))
    return stacks


def source(file: str, line: int) -> str:
    """The source line of a csi_py frame (py-spy prints paths from the package root)."""
    if not file.startswith("csi_py/") or not line:
        return ""
    return linecache.getline(os.path.join(ROOT, file), line).strip()


def _anchor(frames: list[tuple[str, str, int]]) -> int:
    """Index of the innermost frame of csi-py, gRPC, logging or metrics code: a sample
    whose leaf is in the standard library (posixpath, json, contextlib) is charged to
    the code that called it."""
    for i in range(len(frames) - 1, -1, -1):
        file = frames[i][1]
        if file.startswith("csi_py/") or any(p in file for p in (
                "grpc/", "logging/", "prometheus_client")):
            return i
    return len(frames) - 1


def bucket(frames: list[tuple[str, str, int]]) -> str:
    """What an RPC worker thread is doing in one sample."""
    names = [f for f, _, _ in frames]
    if frames[-1][0].startswith("Condition.") and any("_unary_request" in n for n in names):
        return "gRPC: wait for the request message"
    func, file, line = frames[_anchor(frames)]
    text = source(file, line)
    if "grpc/_server.py" in file:
        if func == "_status":
            return "gRPC: send the response (start_server_batch)"
        if "_unary_request" in func:
            return "gRPC: wait for the request message"
        return "gRPC: other dispatch"
    if "with self._lock" in text and "catalog.py" in file:
        return "catalog: wait for the catalog lock"
    if "catalog.py" in file:
        return ("catalog: SQLite COMMIT (WAL fdatasync)" if "COMMIT" in text
                else "catalog: other SQLite (queries, JSON of records)")
    if "fsync" in func or "fsync" in text:
        return "fsync of images and directories"
    if "linux/loop" in file or "_loop_abi" in file:  # loop.py, loop_sysfs.py, loop_attach.py
        if func == "_read" or "find_by_backing_file" in names or "_describe" in names:
            return "loop: sysfs reads (scan of every loop device, attributes)"
        return "loop: ioctls and device nodes"
    if "linux/mount" in file:  # mount.py, mountinfo.py
        return "mounts: /proc/self/mountinfo parsing and mount calls"
    if "linux/volume_view.py" in file:
        return "kernel view of a volume: identity checks, matching mounts"
    if "linux/targets.py" in file:
        return "target paths: create and remove"
    if "_libc.py" in file:
        return "mounts: mount(2)/umount2(2)"
    if "linux/files.py" in file:
        return "image files: create, truncate, unlink"
    if "logging/" in file or "prometheus_client" in file or "observability" in file \
            or file == "csi_py/server.py":
        return "interceptor, logging and metrics"
    if "core/locks.py" in file:
        return "per-volume locks"
    if file in ("csi_py/core/validation.py", "csi_py/rpc/convert.py") or \
            file.startswith("csi_py/domain/") or "rpc/errors.py" in file:
        return "validation, conversion, domain model"
    if file.startswith("csi_py/rpc/"):
        return "rpc servicers"
    if file.startswith("csi_py/core/"):
        return "core logic (controller, node, driver)"
    return "other"


def in_rpc(frames: list[tuple[str, str, int]]) -> bool:
    return any(f == "_unary_response_in_pool" for f, _, _ in frames)


def analyse(path: str, seconds: float) -> dict[str, Any]:
    total = 0
    rpc = 0
    buckets: Counter[str] = Counter()
    for frames, count in parse(path):
        total += count
        if frames and in_rpc(frames):
            rpc += count
            buckets[bucket(frames)] += count
    return {
        "samples": total,
        "rpc_samples": rpc,
        "seconds": round(seconds, 3),
        # Samples per second of wall clock over the rate: threads doing that, on average.
        "rpc_threads_busy": round(rpc / RATE / seconds, 2) if seconds else None,
        "all_threads_sampled": round(total / RATE / seconds, 2) if seconds else None,
        "buckets": [(k, round(v / rpc, 3)) for k, v in buckets.most_common()] if rpc else [],
    }


def spy(pid: int, path: str, mode: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["py-spy", "record", f"--{mode}", "--format", "raw", "--rate",
                             str(RATE), "--nonblocking", "-o", path, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach
    return proc


def lifecycles(drv: h.DriverProc, clients: int, n: int, tag: str,
               chans: dict[int, Client]) -> h.Batch:
    b = h.run_batch(h.csi_lifecycle(drv, BLOCK, tag, chans), clients, max(1, n // clients))
    if b.errors:
        raise h.BenchError(f"lifecycles failed: {b.errors[0]}")
    return b


def profile_concurrency(workdir: str, n: int, clients: int) -> dict[str, Any]:
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    drv = h.DriverProc(h.csi_py_spec(), os.path.join(workdir, "where"))
    drv.start()
    chans: dict[int, Client] = {}
    try:
        lifecycles(drv, clients, 2 * clients, "warm", chans)
        for c in (1, clients):
            for mode in ("idle", "gil"):
                raw = os.path.join(OUT, f"where-block-{c}-{mode}.raw.txt")
                p = spy(drv.pid, raw, mode)
                b = lifecycles(drv, c, n, f"{c}-{mode}", chans)
                h.stop_sampler(p)
                res = analyse(raw, b.seconds)
                res["lifecycles_per_s"] = round(b.done / b.seconds, 1)
                out[f"{c} clients, {mode}"] = res
                h.log(f"where: {c} clients --{mode}: {res['lifecycles_per_s']}/s, RPC threads "
                      f"busy {res['rpc_threads_busy']}")
        out["syscalls"] = syscalls(drv, chans)
    finally:
        for c in chans.values():
            c.close()
        drv.stop()
    return out


def syscalls(drv: h.DriverProc, chans: dict[int, Client], n: int = 20) -> dict[str, float]:
    """Per block lifecycle: counts of the syscalls and files that matter."""
    raw = os.path.join(OUT, "where-strace.raw.txt")
    st = subprocess.Popen(["strace", "-f", "-y", "-e",
                           "trace=openat,fsync,fdatasync,ioctl,mount,umount2", "-o", raw,
                           "-p", str(drv.pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    lifecycles(drv, 1, n, "strace", chans)
    time.sleep(0.3)
    st.send_signal(signal.SIGINT)
    st.wait(timeout=30)
    counts: Counter[str] = Counter()
    with open(raw) as fh:
        for line in fh:
            m = re.search(r"\b(openat|fsync|fdatasync|ioctl|mount|umount2)\((.*)", line)
            if not m:
                continue
            call, rest = m.groups()
            failed = "= -1" in line
            if call == "openat":
                path = re.search(r'"([^"]*)"', rest)
                p = path.group(1) if path else "?"
                if p.startswith("/sys/block/"):
                    key = ("open sysfs backing_file (no such file: loop device unused)"
                           if failed and p.endswith("backing_file") else
                           "open sysfs backing_file" if p.endswith("backing_file") else
                           "open other sysfs attribute")
                elif p == "/proc/self/mountinfo":
                    key = "open /proc/self/mountinfo"
                else:
                    key = "open other files" + (" (failed)" if failed else "")
            elif call == "ioctl":
                req = rest.split(",")[1].strip().split(")")[0]
                key = f"ioctl {req}" + (" (failed)" if failed else "")
            elif call == "fdatasync" and "-wal" in rest:
                key = "fdatasync of the catalog's WAL"
            else:
                key = call
            counts[key] += 1
    loops = sum(1 for d in os.listdir("/sys/block") if d.startswith("loop"))
    out = {k: round(v / n, 1) for k, v in counts.most_common()}
    out["loop devices on the node"] = loops
    return out


def profile_startup(workdir: str, volumes: int) -> dict[str, Any]:
    spec = h.csi_py_spec()
    drv = h.DriverProc(spec, os.path.join(workdir, "startup"))
    drv.start()
    try:
        h.create_many(drv, h.Kind("ext4", False, "ext4", 16 * h.MiB), volumes, 8)
    finally:
        drv.stop()
    plain = drv.start(state=drv.state)
    drv.stop()
    raw = os.path.join(OUT, "where-startup.raw.txt")
    os.unlink(drv.socket) if os.path.exists(drv.socket) else None
    # py-spy launches the driver (a start-up is too short to attach to).
    p = subprocess.Popen(["py-spy", "record", "--idle", "--format", "raw", "--rate", "500",
                          "-o", raw, "--", *spec.argv(drv.socket, drv.state)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        t0 = time.perf_counter()
        while not os.path.exists(drv.socket):
            time.sleep(0.002)
        with Client(drv.socket) as c:
            while True:
                try:
                    if h.probe_ready(c.identity.Probe(pb.ProbeRequest(), timeout=2)):
                        break
                except Exception:  # noqa: BLE001 - not serving yet
                    pass
                time.sleep(0.002)
        under_spy = time.perf_counter() - t0
    finally:
        for pid in h.group_members(p.pid):
            if pid != p.pid:
                os.kill(pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    inc: Counter[str] = Counter()
    total = 0
    for frames, count in parse(raw):
        if not frames or frames[0][0] != "_run_module_as_main":
            continue  # the main thread only: start-up is serial there
        if frames[-1][0] == "Condition.wait" and any(f == "Server.serve_forever"
                                                     for f, _, _ in frames):
            continue  # serving: start-up is over
        total += count
        seen = set()
        for func, file, _line in frames:
            key = f"{func} ({file})"
            if key not in seen:
                inc[key] += count
                seen.add(key)
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "volumes": volumes, "startup_s": round(plain, 3),
            "startup_under_pyspy_s": round(under_spy, 3), "main_thread_samples": total,
            "inclusive": [(k, round(v / total, 3)) for k, v in inc.most_common(40)]}


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Where the time goes (`benchmarks/where.py`, {data['started']})", ""]
    conc = data.get("concurrency", {})
    if conc.get("started"):
        lines += [f"Lifecycle profiles: {conc['started']}, load average {conc['loadavg']}.", ""]
    for name, res in conc.items():
        if name in ("syscalls", "started", "loadavg"):
            continue
        lines += [f"## block lifecycles, {name}", "",
                  f"{res['lifecycles_per_s']}/s; RPC worker threads busy on average: "
                  f"{res['rpc_threads_busy']} (all sampled threads: "
                  f"{res['all_threads_sampled']}); {res['rpc_samples']} RPC samples.", "",
                  "| bucket | share of RPC-thread samples |", "|---|---:|"]
        lines += [f"| {k} | {v * 100:.1f}% |" for k, v in res["buckets"]]
        lines.append("")
    sc = data.get("concurrency", {}).get("syscalls")
    if sc:
        lines += ["## syscalls per block lifecycle (strace -f)", "", "| syscall | per lifecycle |",
                  "|---|---:|"] + [f"| {k} | {v} |" for k, v in sc.items()] + [""]
    st = data.get("startup")
    if st:
        lines += [f"## start-up with {st['volumes']:,} volumes", "",
                  f"{st.get('started', '')}, load average {st.get('loadavg')}.", "",
                  f"{st['startup_s']} s until Probe ready ({st['startup_under_pyspy_s']} s under "
                  f"py-spy); main-thread samples until serving: {st['main_thread_samples']}.", "",
                  "| function (inclusive) | share |", "|---|---:|"]
        lines += [f"| `{k}` | {v * 100:.0f}% |" for k, v in st["inclusive"][:25]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifecycles", type=int, default=96)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--startup-volumes", type=int, default=10_000)
    ap.add_argument("--parts", default="concurrency,startup")
    args = ap.parse_args()
    # py-spy is installed into the interpreter's virtual environment, whose bin/ is often
    # not on PATH.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    for tool in ("py-spy", "strace"):
        if shutil.which(tool) is None:
            print(f"where: {tool} is missing", file=sys.stderr)
            return 1
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="csi-where-")
    os.chmod(workdir, 0o700)
    data: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "loadavg": [round(x, 2) for x in os.getloadavg()],
                            "rate_hz": RATE, "csi_py_version": h.csi_py_spec().version}
    previous = os.path.join(OUT, "where.json")
    if os.path.exists(previous):
        # Parts not run this time keep their last results (each says when it ran).
        with open(previous) as fh:
            data.update({k: v for k, v in json.load(fh).items()
                         if k in ("concurrency", "startup")})
    try:
        parts = args.parts.split(",")
        if "concurrency" in parts:
            data["concurrency"] = profile_concurrency(workdir, args.lifecycles, args.clients)
        if "startup" in parts:
            data["startup"] = profile_startup(workdir, args.startup_volumes)
    finally:
        left = h.leftovers(workdir)
        if left:
            h.log("left behind, cleaning up: " + "; ".join(left))
            h.force_cleanup(workdir)
        if not h.leftovers(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    data["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(os.path.join(OUT, "where.json"), "w") as fh:
        json.dump(data, fh, indent=1)
    with open(os.path.join(OUT, "where.md"), "w") as fh:
        fh.write(markdown(data))
    h.log(f"where: wrote {OUT}/where.json and where.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

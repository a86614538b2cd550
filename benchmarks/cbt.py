#!/usr/bin/env python3
"""Changed-block tracking benchmark: GetMetadataDelta against a byte comparison.

On a reflink pool made here (a sparse image in a temporary directory, `mkfs.xfs -m
reflink=1`, on a loop device, mounted as csi-py's pool) a 10 GiB thin block volume gets
200 MiB of random data in 1 MiB pieces, is snapshotted, then has 100 MiB changed (50 MiB
over old data, 50 MiB in fresh places) and is snapshotted again. Timed, each in several
rounds (median reported):

- GetMetadataDelta through gRPC, every range streamed to the client (extent maps);
- the byte comparison a driver without extent maps does (what the reference driver's
  SnapshotMetadata does): read both snapshot images whole and compare them block by block;
- csi-py's fallback for copied snapshots: compare only what is allocated in either image;
- GetMetadataAllocated of the second snapshot.

The fast ones run --rounds times, the whole-image comparison --slow-rounds times.

All three deltas must agree, range for range, or the run fails. Page caches stay warm
(the machine is shared: no cache drop), which flatters the byte comparison, if anything.
Writes benchmarks/results/cbt.json; benchmarks/report.py renders it into
docs/benchmarks.md. Needs root.

    python3 benchmarks/cbt.py [--rounds 5] [--slow-rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from csi_py._proto import csi_pb2 as pb  # noqa: E402
from csi_py._proto import csi_pb2_grpc  # noqa: E402
from csi_py.config import Config  # noqa: E402
from csi_py.core.driver import Driver  # noqa: E402
from csi_py.linux import extents, real_host  # noqa: E402
from csi_py.rpc.client import Client, block_capability  # noqa: E402
from csi_py.server import Server  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
BLOCK = 4096


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= off:
            out[-1] = (out[-1][0], max(out[-1][0] + out[-1][1], off + n) - out[-1][0])
        else:
            out.append((off, n))
    return out


def full_byte_comparison(a: str, b: str, chunk: int = 4 * MiB) -> list[tuple[int, int]]:
    """Read both images whole, compare block by block."""
    changed = []
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        size = max(os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size)
        pos = 0
        while pos < size:
            da = fa.read(chunk).ljust(min(chunk, size - pos), b"\0")
            db = fb.read(chunk).ljust(min(chunk, size - pos), b"\0")
            if da != db:
                changed += [(pos + i, BLOCK) for i in range(0, len(da), BLOCK)
                            if da[i:i + BLOCK] != db[i:i + BLOCK]]
            pos += chunk
    return merged(changed)


def allocated_comparison(a: str, b: str) -> list[tuple[int, int]]:
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        return merged(list(extents.compare_allocated(fa, fb, os.fstat(fb).st_size)))
    finally:
        os.close(fa)
        os.close(fb)


def timed(fn, rounds: int):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def write(path: str, offsets: list[int], seed: int) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in offsets:
            os.pwrite(fd, rng.randbytes(MiB), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def run(workdir: str, rounds: int, slow_rounds: int, volume_bytes: int) -> dict:
    host = real_host()
    backing = os.path.join(workdir, "pool-xfs.img")
    with open(backing, "wb") as fh:
        fh.truncate(2 * GiB)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing], check=True,
                   capture_output=True)
    pool = os.path.join(workdir, "pool")
    os.mkdir(pool, 0o700)
    device = host.loops.attach(backing)
    try:
        host.mounts.mount(device.path, pool, "xfs", ["nosuid", "nodev"])
        try:
            return _measure(workdir, pool, rounds, slow_rounds, volume_bytes)
        finally:
            host.mounts.unmount(pool)
    finally:
        host.loops.detach(device.path)


def _measure(workdir: str, pool: str, rounds: int, slow_rounds: int,
             volume_bytes: int) -> dict:
    config = Config(endpoint=f"unix://{workdir}/csi.sock", node_id="bench", pool=pool,
                    reserve_bytes=16 * MiB).validated()
    server = Server(Driver(config, real_host()))
    server.start()
    client = Client(config.socket_path)
    try:
        client.wait_ready(10)
        ctl = client.controller
        vol = ctl.CreateVolume(pb.CreateVolumeRequest(
            name="cbt", capacity_range=pb.CapacityRange(required_bytes=volume_bytes),
            volume_capabilities=[block_capability()]), timeout=60).volume
        image = os.path.join(pool, "volumes", vol.volume_id + ".img")
        slots = random.Random(7).sample(range(volume_bytes // MiB), 250)
        first, fresh = sorted(slots[:200]), sorted(slots[200:])
        overwritten = random.Random(8).sample(first, 50)
        write(image, [s * MiB for s in first], 1)
        base = ctl.CreateSnapshot(pb.CreateSnapshotRequest(
            source_volume_id=vol.volume_id, name="base"), timeout=120).snapshot
        write(image, sorted(s * MiB for s in overwritten + fresh), 2)
        top = ctl.CreateSnapshot(pb.CreateSnapshotRequest(
            source_volume_id=vol.volume_id, name="top"), timeout=120).snapshot
        stub = csi_pb2_grpc.SnapshotMetadataStub(client.channel)

        def grpc_ranges(call, request) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
            return merged([(b.byte_offset, b.size_bytes) for rsp in call(request, timeout=600)
                           for b in rsp.block_metadata])

        delta_req = pb.GetMetadataDeltaRequest(base_snapshot_id=base.snapshot_id,
                                               target_snapshot_id=top.snapshot_id)
        alloc_req = pb.GetMetadataAllocatedRequest(snapshot_id=top.snapshot_id)
        a = os.path.join(pool, "snapshots", base.snapshot_id + ".img")
        b = os.path.join(pool, "snapshots", top.snapshot_id + ".img")
        d_s, d_all, d_ranges = timed(lambda: grpc_ranges(stub.GetMetadataDelta, delta_req),
                                     rounds)
        f_s, f_all, f_ranges = timed(lambda: full_byte_comparison(a, b), slow_rounds)
        c_s, c_all, c_ranges = timed(lambda: allocated_comparison(a, b), rounds)
        al_s, al_all, al_ranges = timed(
            lambda: grpc_ranges(stub.GetMetadataAllocated, alloc_req), rounds)
        if not (d_ranges == f_ranges == c_ranges):
            raise SystemExit("the three deltas disagree: "
                             f"{len(d_ranges)} / {len(f_ranges)} / {len(c_ranges)} ranges")
        changed = sum(n for _, n in d_ranges)
        return {
            "volume_bytes": volume_bytes,
            "written_before_bytes": 200 * MiB,
            "changed_bytes": changed,
            "changed_ranges": len(d_ranges),
            "allocated_bytes": sum(n for _, n in al_ranges),
            "rounds": rounds,
            "full_comparison_rounds": slow_rounds,
            "get_metadata_delta_s": round(d_s, 4),
            "get_metadata_delta_rounds_s": [round(t, 4) for t in d_all],
            "full_byte_comparison_s": round(f_s, 3),
            "full_byte_comparison_rounds_s": [round(t, 3) for t in f_all],
            "allocated_comparison_s": round(c_s, 3),
            "allocated_comparison_rounds_s": [round(t, 3) for t in c_all],
            "get_metadata_allocated_s": round(al_s, 4),
            "speedup_vs_full_comparison": round(f_s / d_s, 1),
            "speedup_vs_allocated_comparison": round(c_s / d_s, 1),
        }
    finally:
        client.close()
        server.stop(grace=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slow-rounds", type=int, default=2,
                    help="rounds of the whole-image byte comparison (tens of seconds each)")
    ap.add_argument("--volume-bytes", type=int, default=10 * GiB)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cbt.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/cbt.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="csi-py-cbt-")
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result = run(workdir, args.rounds, args.slow_rounds, args.volume_bytes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["started"] = started
    result["machine"] = {"kernel": platform.release(), "cores": os.cpu_count(),
                         "python": platform.python_version(),
                         "loadavg_at_end": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""A/B of csi-py variants: block-volume lifecycles of several csi-py servers that differ in
one setting, in interleaved rounds (the order rotates each round), as ratios to the first.

  benchmarks/variants.py [--rounds 12] [--variants default,control,tmpfs-pool,...]

Variants: default; control (the same as default: the spread between the two is the noise
of the run); tmpfs-pool (the pool in /dev/shm: what fsync and the disk cost, an upper
bound of what removing durable syncs could win); workers2/4/32 (gRPC worker threads;
the default is 16); warning-log and debug-log (log level; the default is INFO);
base (the csi-py source tree given with --base, e.g. `git archive` of the commit before
a change, run with that tree first on PYTHONPATH: an A/B of a change in one run).
Needs root. Prints the table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness as h  # noqa: E402

VARIANTS: dict[str, tuple[list[str], bool]] = {  # name -> (extra serve flags, pool on tmpfs)
    "default": ([], False),
    "control": ([], False),
    "tmpfs-pool": ([], True),
    "workers2": (["--workers", "2"], False),
    "workers4": (["--workers", "4"], False),
    "workers32": (["--workers", "32"], False),
    "warning-log": (["--log-level", "WARNING"], False),
    "debug-log": (["--log-level", "DEBUG"], False),
    "base": ([], False),
}
BASE_SRC = ""  # --base


def spec_of(name: str) -> h.DriverSpec:
    spec = h.csi_py_spec()
    base = spec.argv
    extra = VARIANTS[name][0]
    spec.name = name
    if name == "base":
        # `env` execs the driver, so the pid the harness watches is the driver's.
        spec.argv = lambda sock, state: ["env", f"PYTHONPATH={BASE_SRC}", *base(sock, state)]
    else:
        spec.argv = lambda sock, state: [*base(sock, state), *extra]
    return spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--variants", default="default,control,tmpfs-pool,workers4,workers32")
    ap.add_argument("--seq", type=int, default=8, help="sequential lifecycles per round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--kind", default="block", choices=["block", "ext4"],
                    help="the volumes' kind (ext4: 64 MiB, formatted at NodeStageVolume)")
    ap.add_argument("--rpc", default="NodeStageVolume",
                    help="RPCs (comma-separated) whose p50 (sequential lifecycles) is "
                         "also compared")
    ap.add_argument("--base", default="", help="csi-py source tree for the variant 'base'")
    args = ap.parse_args()
    names = args.variants.split(",")
    global BASE_SRC
    BASE_SRC = os.path.abspath(args.base) if args.base else ""
    if "base" in names and not os.path.isfile(os.path.join(BASE_SRC, "csi_py", "__init__.py")):
        print("variants: 'base' needs --base DIR, a csi-py source tree", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"variants: unknown {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="csi-variants-")
    shm = tempfile.mkdtemp(prefix="csi-variants-", dir="/dev/shm")
    for p in (work, shm):
        os.chmod(p, 0o700)
    kind = h.Kind("block", True, "", 64 * h.MiB) if args.kind == "block" else \
        h.Kind("ext4", False, "ext4", 64 * h.MiB)
    drivers: dict[str, tuple[h.DriverProc, dict[int, Any]]] = {}
    seq: dict[str, list[float]] = {n: [] for n in names}
    conc: dict[str, list[float]] = {n: [] for n in names}
    rpcs = [r.strip() for r in args.rpc.split(",") if r.strip()]
    # per RPC and variant, one p50 per round
    rpc_p50: dict[str, dict[str, list[float]]] = {r: {n: [] for n in names} for r in rpcs}
    try:
        for n in names:
            d = h.DriverProc(spec_of(n), os.path.join(work, n))
            d.start(state=os.path.join(shm, n) if VARIANTS[n][1] else None)
            drivers[n] = (d, {})
            h.run_batch(h.csi_lifecycle(d, kind, "warm", drivers[n][1]), 1, 2)
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                d, chans = drivers[n]
                for out, clients, count in ((seq, 1, args.seq),
                                            (conc, args.clients, args.per_client)):
                    b = h.run_batch(h.csi_lifecycle(d, kind, f"{r}-{clients}", chans),
                                    clients, count)
                    if b.errors:
                        raise h.BenchError(f"{n}: {b.errors[0]}")
                    out[n].append(b.done / b.seconds)
                    for rpc in rpcs if clients == 1 else ():
                        if b.samples.get(rpc):
                            rpc_p50[rpc][n].append(statistics.median(b.samples[rpc]))
        first = names[0]
        print(f"| variant | sequential /s | ratio to {first} (min-max) | {args.clients} "
              f"clients /s | ratio to {first} (min-max) |")
        print("|---|---:|---:|---:|---:|")
        for n in names:
            rs = [a / b for a, b in zip(seq[n], seq[first], strict=True)]
            rc = [a / b for a, b in zip(conc[n], conc[first], strict=True)]
            print(f"| {n} | {statistics.median(seq[n]):.1f} | {statistics.median(rs):.2f}x "
                  f"({min(rs):.2f}-{max(rs):.2f}) | {statistics.median(conc[n]):.1f} | "
                  f"{statistics.median(rc):.2f}x ({min(rc):.2f}-{max(rc):.2f}) |")
        for rpc, p50s in rpc_p50.items():
            if not all(len(p50s[n]) == args.rounds for n in names):
                continue
            print(f"\n| variant | {rpc} p50 ms (sequential) | ratio to {first} "
                  "| per-round ratios, min-max |")
            print("|---|---:|---:|---:|")
            for n in names:
                rr = [a / b for a, b in zip(p50s[n], p50s[first], strict=True)]
                print(f"| {n} | {statistics.median(p50s[n]):.2f} | "
                      f"{statistics.median(rr):.2f}x | {min(rr):.2f}-{max(rr):.2f} |")
        print(f"\n{args.kind} volumes; {args.rounds} interleaved rounds, medians; load average "
              f"{[round(x, 2) for x in os.getloadavg()]}")
    finally:
        for d, chans in drivers.values():
            for c in chans.values():
                c.close()
            d.stop()
        for p in (work, shm):
            h.force_cleanup(p)
            if not h.leftovers(p):
                shutil.rmtree(p, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

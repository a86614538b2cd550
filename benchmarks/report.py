#!/usr/bin/env python3
"""Render benchmarks/results/latest.json into docs/benchmarks.md, docs/benchmarks.png and
benchmarks/results/summary.md. Every csi-py figure stands next to the reference measured in
the same run and as a ratio to it; the profile findings (benchmarks/findings.md, written by
hand from py-spy runs) are included as they are."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from csi_py.domain.units import GiB, MiB  # noqa: E402

RPCS = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume",
        "NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume")
# Figures of the round before this one (docs/benchmarks.md at 6397d49, csi-py 506ea76),
# for target 6: none of them may get worse.
PREVIOUS = {"create_per_s": 596.0, "list_all_s": 0.221, "snapshot_xfs_s": 0.055,
            "snapshot_ext4_s": 0.773}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fx(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def num(v: float | None, unit: str = "", nd: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{nd}f}{unit}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


class View:
    """The numbers the tables need, from latest.json."""

    def __init__(self, res: dict[str, Any]) -> None:
        self.res = res
        life = res.get("lifecycle") or {}
        self.life = life.get("results", {})
        self.pairs = life.get("paired_ratios", {})
        self.clients = life.get("clients", 8)

    def tput(self, drv: str, kind: str, mode: str) -> float | None:
        return get(self.life, drv, kind, mode, "per_second")

    def p50(self, drv: str, kind: str, rpc: str) -> float | None:
        return get(self.life, drv, kind, "sequential", "rpc", rpc, "p50")

    def pair(self, label: str, mode: str) -> float | None:
        return get(self.pairs, label, mode, "median")

    def io(self, target: str, job: str) -> float | None:
        return get(self.res, "io", "targets", target, job, "iops")

    def restart(self, drv: str, key: str) -> Any:
        return get(self.res, "restart", "drivers", drv, key)


def targets(v: View) -> list[str]:
    rows = ["| # | target | csi-py | reference | ratio (csi-py / reference) | kernel floor "
            "| verdict |", "|---|---|---|---|---|---|---|"]
    floor = "kernel-floor"
    n = v.clients
    for label, kind, ref_kind, need, num_ in (
            ("Block lifecycle >= 5x the reference", "block", "block", 5.0, "1"),
            ("ext4 lifecycle >= 2x the reference's plain directories", "ext4", "mount", 2.0,
             "2")):
        pair = "block" if kind == "block" else "ext4 vs directories"
        rs, rc = v.pair(pair, "sequential"), v.pair(pair, "concurrent")
        ok = None if rs is None or rc is None else rs >= need and rc >= need
        rows.append(
            f"| {num_} | {label}, sequential / {n} clients | "
            f"{num(v.tput('csi-py', kind, 'sequential'), '/s')} / "
            f"{num(v.tput('csi-py', kind, 'concurrent'), '/s')} | "
            f"{num(v.tput('reference', ref_kind, 'sequential'), '/s')} / "
            f"{num(v.tput('reference', ref_kind, 'concurrent'), '/s')} | "
            f"{fx(rs)} / {fx(rc)} | {num(v.tput(floor, kind, 'sequential'), '/s')} / "
            f"{num(v.tput(floor, kind, 'concurrent'), '/s')} | {verdict(ok)} |")
    for rpc, limit in (("NodePublishVolume", 0.5), ("NodeUnpublishVolume", 0.5),
                       ("CreateVolume", 1.0)):
        mine = [v.p50("csi-py", k, rpc) for k in ("block", "ext4")]
        theirs = [v.p50("reference", k, rpc) for k in ("block", "mount")]
        ok = None if None in mine else max(m for m in mine if m is not None) <= limit
        rows.append(
            f"| 3 | {rpc} p50 <= {limit} ms (block / ext4; reference block / directory) | "
            f"{num(mine[0], ' ms', 2)} / {num(mine[1], ' ms', 2)} | "
            f"{num(theirs[0], ' ms', 2)} / {num(theirs[1], ' ms', 2)} | "
            f"{fx(ratio(mine[0], theirs[0]))} / {fx(ratio(mine[1], theirs[1]))} | "
            f"{num(v.p50(floor, 'block', rpc), ' ms', 2)} / "
            f"{num(v.p50(floor, 'ext4', rpc), ' ms', 2)} | {verdict(ok)} |")
    pool = "pool filesystem"
    for job, what in (("rand_read_4k", "read"), ("rand_write_4k", "write")):
        p = v.io(pool, job)
        vals = {t: v.io(t, job) for t in ("csi-py ext4", "csi-py block", "reference block",
                                          "bare losetup --direct-io")}
        ok = None if p is None or None in (vals["csi-py ext4"], vals["csi-py block"]) else \
            min(vals["csi-py ext4"] or 0, vals["csi-py block"] or 0) >= 0.9 * p
        rows.append(
            f"| 4 | 4 KiB random {what} in a volume >= 0.9x the pool fs (ext4 / block; "
            f"bare loop) | {fx(ratio(vals['csi-py ext4'], p))} / "
            f"{fx(ratio(vals['csi-py block'], p))} of the pool | block "
            f"{fx(ratio(vals['reference block'], p))} of the pool (buffered: page cache) | "
            f"block {fx(ratio(vals['csi-py block'], vals['reference block']))} | "
            f"bare `losetup --direct-io` {fx(ratio(vals['bare losetup --direct-io'], p))} "
            f"of the pool | {verdict(ok)} (see I/O) |")
    vols = get(v.res, "restart", "volumes")
    s_c, s_r = v.restart("csi-py", "startup_full_s_median"), \
        v.restart("reference", "startup_full_s_median")
    rss_c, rss_r = v.restart("csi-py", "rss_full_kib_median"), \
        v.restart("reference", "rss_full_kib_median")
    rows.append(
        f"| 5 | restart until Probe answers, {num(vols, '', 0)} volumes: <= 0.3 s | "
        f"{num(s_c, ' s', 3)} | {num(s_r, ' s', 3)} | {fx(ratio(s_c, s_r))} (lower is "
        f"better) | no kernel work; csi-py with an empty pool "
        f"{num(v.restart('csi-py', 'startup_empty_s_median'), ' s', 3)} | "
        f"{verdict(None if s_c is None else s_c <= 0.3)} |")
    rows.append(
        f"| 5 | resident memory after that start-up < 80 MiB | "
        f"{num(rss_c and rss_c / 1024, ' MiB')} | {num(rss_r and rss_r / 1024, ' MiB')} | "
        f"{fx(ratio(rss_c, rss_r))} | | "
        f"{verdict(None if rss_c is None else rss_c < 80 * 1024)} |")
    cr = v.restart("csi-py", "create_per_s")
    ls = v.restart("csi-py", "list_all_s")
    sx = get(v.res, "snapshots", "xfs pool", "create_snapshot_s")
    se = get(v.res, "snapshots", "ext4 pool", "create_snapshot_s")
    six = []
    if cr is not None and vols == 10_000:
        six.append((f"create {num(cr, '/s')} (was {PREVIOUS['create_per_s']:.0f}/s)",
                    cr >= PREVIOUS["create_per_s"]))
        six.append((f"list all {num(ls, ' s', 3)} (was {PREVIOUS['list_all_s']} s)",
                    ls is not None and ls <= PREVIOUS["list_all_s"]))
    if get(v.res, "snapshots", "data_bytes") != GiB:
        sx = se = None  # another size than last round's: not comparable
    if sx is not None:
        six.append((f"xfs snapshot {sx:.3f} s (was {PREVIOUS['snapshot_xfs_s']} s)",
                    sx <= PREVIOUS["snapshot_xfs_s"]))
    if se is not None:
        six.append((f"ext4 snapshot {se:.3f} s (was {PREVIOUS['snapshot_ext4_s']} s)",
                    se <= PREVIOUS["snapshot_ext4_s"]))
    rows.append(
        "| 6 | no figure of the last round worse (10k creation and listing, 1 GiB "
        "snapshot; csi-sanity is not run here) | " + "; ".join(t for t, _ in six) +
        " | | | | " + (verdict(all(ok for _, ok in six)) if six else "n/a") + " (figures of "
        "another run: see [Where the time goes](#where-the-time-goes)) |")
    return rows


def chart(v: View, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 6))
    ax = axes[0]
    groups = [("block", "block", "block"), ("ext4", "mount", "ext4")]
    labels = [f"{a} sequential" for a, _, _ in groups] + \
        [f"{a} {v.clients} clients" for a, _, _ in groups]
    modes = ["sequential"] * 2 + ["concurrent"] * 2
    w = 0.27
    for i, (drv, color, which) in enumerate((("csi-py", "#1f77b4", 0), ("reference", "#ff7f0e", 1),
                                             ("kernel-floor", "#7f7f7f", 2))):
        vals = [v.tput(drv, g[which if drv != "kernel-floor" else 2] if drv != "csi-py"
                       else g[0], m) or 0
                for g, m in zip(groups * 2, modes, strict=True)]
        bars = ax.bar([x + (i - 1) * w for x in range(4)], vals, w, label=drv, color=color)
        if drv == "csi-py":
            # The median of the per-round ratios, as in the tables.
            pairs = [v.pair("block" if g[0] == "block" else "ext4 vs directories", m)
                     for g, m in zip(groups * 2, modes, strict=True)]
            for bar, val, r in zip(bars, vals, pairs, strict=True):
                if r:
                    ax.annotate(f"{r:.2f}x", (bar.get_x() + bar.get_width() / 2, val),
                                ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(4), [lb.replace(" ", "\n", 1) for lb in labels], fontsize=8)
    ax.set_ylabel("lifecycles per second (log); reference mount = directories")
    ax.set_title("Lifecycle throughput, median of rounds (label: ratio to reference)")
    ax.legend(fontsize=8)
    ax = axes[1]
    names, mine, theirs = [], [], []
    for kind, ref_kind in (("block", "block"), ("ext4", "mount")):
        for rpc in RPCS:
            c = v.p50("csi-py", kind, rpc)
            if c is None:
                continue
            names.append(f"{kind} {rpc.replace('Volume', '')}")
            mine.append(c)
            theirs.append(v.p50("reference", ref_kind, rpc) or 0)
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], mine, 0.4, label="csi-py p50", color="#1f77b4")
    ax.barh([y + 0.2 for y in ys], theirs, 0.4, label="reference p50", color="#ff7f0e")
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(0.5, color="green", ls="--", lw=1, label="0.5 ms")
    ax.set_xlabel("milliseconds (log)")
    ax.set_title("Per-RPC p50, sequential")
    ax.legend(fontsize=8)
    ax = axes[2]
    io_targets = [t for t in (get(v.res, "io", "targets") or {}) if t != "pool filesystem"]
    jobs = ["rand_read_4k", "rand_write_4k"]
    w = 0.8 / max(len(io_targets), 1)
    for i, t in enumerate(io_targets):
        vals = [ratio(v.io(t, j), v.io("pool filesystem", j)) or 0 for j in jobs]
        xs = [x + (i - (len(io_targets) - 1) / 2) * w for x in range(len(jobs))]
        ax.bar(xs, vals, w, label=t)
        for x, val in zip(xs, vals, strict=True):
            ax.annotate(f"{val:.2f}", (x, val), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.9, color="green", ls="--", lw=1, label="target 0.9")
    ax.set_xticks(range(len(jobs)), [j.replace("_", " ") for j in jobs])
    ax.set_ylabel("IOPS ratio to the pool filesystem (fio O_DIRECT, iodepth 32)")
    ax.set_title("4 KiB random I/O inside a volume")
    ax.legend(fontsize=7)
    fig.suptitle(f"csi-py vs reference {v.res.get('reference_version')}, one run, "
                 f"{v.res['machine']['cores']} shared cores (loaded), {v.res['started'][:10]}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(res: dict[str, Any], findings: str, png_rel: str) -> tuple[str, str]:
    v = View(res)
    m = res["machine"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w("csi-py measured side by side with the Go reference driver, "
      "[csi-driver-host-path](https://github.com/kubernetes-csi/csi-driver-host-path) "
      f"{res.get('reference_version') or '(not run)'}, built by hand (see "
      "[The reference](#the-reference)), on one machine in one run, driven by the same "
      "Python client. Every number comes from `benchmarks/results/latest.json` of that run; "
      "rerun with `REFERENCE_BIN=... benchmarks/run` (see [Rerunning](#rerunning)).")
    w("")
    if res.get("quick"):
        w("> **A --quick run**: small counts, for checking the harness only.")
        w("")
    # The load at the end is mostly the benchmark's own (fio, 8 clients); the load at the
    # start says whether anything else was running.
    quiet = m["loadavg_at_start"][0] < 1.0
    w((f"> **Quiet machine.** Nothing else ran on the {m['cores']} cores when the run "
       f"started (load average {m['loadavg_at_start']}; {m.get('loadavg_at_end')} at the "
       "end, from the benchmark's own work). " if quiet else
       f"> **Loaded machine.** The run shared {m['cores']} cores with other work (load "
       f"average {m['loadavg_at_start']} at the start, {m.get('loadavg_at_end')} at the "
       "end). Absolute numbers are noisy. ") +
      "What counts are the ratios, measured in interleaved rounds (the order rotates every "
      "round) and taken as the median of the per-round ratios.")
    w("")
    if res.get("errors"):
        w("> **Sections that failed:** " + "; ".join(f"{k}: {e}" for k, e in
                                                    res["errors"].items()))
        w("")
    w(f"![csi-py vs the reference]({png_rel})")
    w("")
    w("## Targets")
    w("")
    out.extend(targets(v))
    w("")
    w("Throughput ratios above 1 favour csi-py; for latencies, start-up and memory below 1 "
      "does. Why each missed target is missed, and what would win the most, is in "
      "[Where the time goes](#where-the-time-goes).")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for k in ("cpu_model", "cores", "memory_gib", "kernel", "distro", "python", "grpcio", "fio",
              "tmp_filesystem", "csi_py_version"):
        w(f"| {k} | {m.get(k)} |")
    w(f"| reference | {res.get('reference_version')} |")
    secs = ", ".join(f"{k} {s} s" for k, s in res.get("section_seconds", {}).items())
    w(f"| run | {res['started']}, {res.get('total_seconds')} s ({secs}) |")
    w("")
    cl = res.get("client")
    w("## The harness client's own cost")
    w("")
    if cl:
        w(f"GetPluginInfo {cl['n']} times from the harness client (csi_py.rpc.client, one "
          "channel) to a null Python gRPC server in a child process (a thread-pool server like "
          f"csi-py's; it answers from a constant): **p50 {cl['p50']:.3f} ms** per round trip "
          f"(p99 {cl['p99']:.3f} ms), of which the client process spends "
          f"**{cl['client_cpu_ms_per_call']:.3f} ms CPU** per call (its process time over the "
          "calls). That is the client's share of every RPC below, for both drivers alike. The "
          "same call after 5 ms of idle (as in a lifecycle, where the server's threads go to "
          "sleep between calls), against a grpc.aio null server, and against the drivers:")
        w("")
        w("| server | p50 back to back | p99 | client CPU per call | p50 after 5 ms idle | "
          "client CPU |")
        w("|---|---:|---:|---:|---:|---:|")
        rows = [("null server, thread pool (Python)", get(cl, "null-sync", "back_to_back"),
                 get(cl, "null-sync", "after_5ms_idle")),
                ("null server, grpc.aio (Python)", get(cl, "null-aio", "back_to_back"),
                 get(cl, "null-aio", "after_5ms_idle"))]
        rows += [(d, get(v.res, "lifecycle", "drivers", d, "noop_rpc"),
                  get(v.res, "lifecycle", "drivers", d, "noop_rpc_after_5ms_idle"))
                 for d in ("csi-py", "reference")]
        for name, x, y in rows:
            if x:
                w(f"| {name} | {x['p50']:.3f} ms | {x['p99']:.3f} ms | "
                  f"{x['client_cpu_ms_per_call']:.3f} ms | "
                  f"{num(y and y['p50'], ' ms', 3)} | "
                  f"{num(y and y['client_cpu_ms_per_call'], ' ms', 3)} |")
        w("")
    else:
        w("(not run)")
        w("")
    w("## Volume lifecycle")
    w("")
    lf = res.get("lifecycle")
    if lf:
        w(f"One lifecycle = {', '.join(RPCS)} over the driver's unix socket. Each of "
          f"{lf['rounds']} interleaved rounds runs, for every driver and kind, "
          f"{lf['seq_per_round']} sequential lifecycles from one client and then "
          f"{lf['clients']} clients (own channel each) doing {lf['per_client_per_round']} each; "
          "two uncounted warm-up lifecycles first. Volumes are 64 MiB. csi-py's ext4 volumes "
          "are real filesystems (mkfs.ext4 at the first NodeStageVolume); the reference ignores "
          "fsType: its mount volumes are plain directories. The **kernel floor** does the same "
          "work with the syscalls alone in the harness (no driver, no catalog): a sparse file, "
          "LOOP_CTL_GET_FREE + LOOP_CONFIGURE (direct I/O, 4 KiB logical blocks), bind mounts "
          "with mount(2), umount2(2), LOOP_CLR_FD, unlink; its ext4 lifecycle adds `mkfs.ext4 "
          "-b 4096` and the mount and unmount of the staging filesystem.")
        w("")
        w("Lifecycles per second, median of the rounds, and the median of the per-round ratios:")
        w("")
        w(f"| kind | csi-py seq | reference seq | ratio | csi-py {v.clients} clients | "
          f"reference {v.clients} clients | ratio | kernel floor seq / {v.clients} clients |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for kind, ref_kind, pair in (("block", "block", "block"),
                                     ("ext4", "mount", "ext4 vs directories")):
            w(f"| {kind} vs reference {ref_kind} | {num(v.tput('csi-py', kind, 'sequential'))} | "
              f"{num(v.tput('reference', ref_kind, 'sequential'))} | "
              f"{fx(v.pair(pair, 'sequential'))} | "
              f"{num(v.tput('csi-py', kind, 'concurrent'))} | "
              f"{num(v.tput('reference', ref_kind, 'concurrent'))} | "
              f"{fx(v.pair(pair, 'concurrent'))} | "
              f"{num(v.tput('kernel-floor', kind, 'sequential'))} / "
              f"{num(v.tput('kernel-floor', kind, 'concurrent'))} |")
        w("")
        fb = get(v.life, "kernel-floor", "block", "sequential", "rpc", "lifecycle", "p50")
        fe = get(v.life, "kernel-floor", "ext4", "sequential", "rpc", "lifecycle", "p50")
        sb = sum(v.p50("csi-py", "block", r) or 0 for r in RPCS)
        se = sum(v.p50("csi-py", "ext4", r) or 0 for r in RPCS)
        w(f"The kernel floor of a block lifecycle is **{num(fb, ' ms', 2)}** p50 (csi-py's "
          f"eight p50s add up to {sb:.2f} ms: {fx(ratio(sb, fb))} the floor); of an ext4 "
          f"lifecycle with 4 KiB blocks **{num(fe, ' ms', 2)}** (csi-py {se:.2f} ms, "
          f"{fx(ratio(se, fe))}). csi-py / kernel floor throughput, median of rounds: block "
          f"{fx(v.pair('block vs kernel floor', 'sequential'))} sequential, "
          f"{fx(v.pair('block vs kernel floor', 'concurrent'))} with {v.clients} clients; "
          f"ext4 {fx(v.pair('ext4 vs kernel floor', 'sequential'))}, "
          f"{fx(v.pair('ext4 vs kernel floor', 'concurrent'))}.")
        w("")
        w("Per-round throughput (lifecycles/s), to see the noise:")
        w("")
        w("| driver kind | sequential rounds | concurrent rounds |")
        w("|---|---|---|")
        for drv, kinds in v.life.items():
            for kind, e in kinds.items():
                seq_r, conc_r = (", ".join(f"{x:.0f}" for x in e[mode]["per_second_rounds"])
                                 for mode in ("sequential", "concurrent"))
                w(f"| {drv} {kind} | {seq_r} | {conc_r} |")
        w("")
        w("Per-RPC latency, milliseconds (sequential p50 / p99; with "
          f"{v.clients} clients p50):")
        w("")
        w("| RPC | csi-py block | reference block | csi-py ext4 | reference mount |")
        w("|---|---:|---:|---:|---:|")
        for rpc in RPCS:
            cells = []
            for drv, kind in (("csi-py", "block"), ("reference", "block"), ("csi-py", "ext4"),
                              ("reference", "mount")):
                s = get(v.life, drv, kind, "sequential", "rpc", rpc)
                c = get(v.life, drv, kind, "concurrent", "rpc", rpc)
                cells.append(f"{s['p50']:.2f} / {s['p99']:.2f}; {c['p50']:.2f}" if s and c
                             else "n/a")
            w(f"| {rpc} | " + " | ".join(cells) + " |")
        errs = [f"{d} {k}: {e}" for d, ks in v.life.items() for k, x in ks.items()
                for e in x["sequential"]["errors"] + x["concurrent"]["errors"]]
        if errs:
            w("")
            w("Errors: " + "; ".join(errs))
        w("")
    else:
        w("(not run)")
        w("")
    w("## I/O inside a volume")
    w("")
    io = res.get("io")
    if io:
        w(f"fio {m['fio']}, O_DIRECT (`--direct=1 --ioengine=libaio`), 4 KiB random read and "
          f"write at iodepth 32, {io['runtime_s']} s per job over {io['size_bytes'] >> 20} MiB, "
          f"{io['rounds']} rounds (median), every job on every target back to back. Every "
          "target is first filled with a sequential write. The pool filesystem is "
          f"**{io['pool_fs_type']}** (from /proc/self/mountinfo) on the machine's disk. The "
          "bare loop device is `losetup --direct-io=on --sector-size 4096` over a sparse file in "
          "the same filesystem, no driver involved: the kernel's own limit for a loop-backed "
          "volume. The `bare loop, ...` rows are the same device with one setting changed "
          "(512-byte logical blocks, no direct I/O, or one queue attribute in "
          "/sys/block/loopN/queue: scheduler, rotational, nomerges, nr_requests), to measure "
          "the loop knobs. csi-py's ext4 volume runs fio on a file in the published mount, block "
          "volumes on the published device. The reference's block volumes are buffered loop "
          "devices, so O_DIRECT inside them lands in the host's page cache: its numbers are "
          "cache speed, not disk speed, and are lost on a crash.")
        w("")
        w("| where | rand read 4k IOPS | vs pool | vs bare loop | rand write 4k IOPS | vs pool "
          "| vs bare loop |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for t in io["targets"]:
            cells = []
            for j in ("rand_read_4k", "rand_write_4k"):
                val = v.io(t, j)
                cells += [num(val, "", 0), fx(ratio(val, v.io("pool filesystem", j))),
                          fx(ratio(val, v.io("bare losetup --direct-io", j)))]
            w(f"| {t} | " + " | ".join(cells) + " |")
        w("")
    else:
        w("(not run)")
        w("")
    w("## Restart with many volumes")
    w("")
    rs = res.get("restart")
    if rs:
        c = rs["drivers"].get("csi-py", {})
        r = rs["drivers"].get("reference", {})
        w(f"{rs['volumes']:,} volumes. csi-py's are made through CreateVolume (16 MiB thin "
          f"ext4) by {rs['clients']} clients; the reference's by copying one record it wrote "
          "itself in its state file (through its RPC each CreateVolume rewrites that whole JSON "
          "file, O(volumes) per call), with a directory each. Then each driver is stopped and "
          f"started {rs['rounds']} times, the two alternating, and timed from spawn until Probe "
          "answers ready (csi-py reconciles every volume with the kernel before it serves); "
          "RSS (VmRSS) right then. Medians.")
        w("")
        w("| measure | csi-py | reference | ratio |")
        w("|---|---:|---:|---:|")
        for key, label, scale, unit, nd in (
                ("startup_full_s_median", f"start-up until Probe, {rs['volumes']:,} volumes",
                 1, " s", 3),
                ("startup_empty_s_median", "start-up until Probe, empty", 1, " s", 3),
                ("rss_full_kib_median", f"RSS after start-up, {rs['volumes']:,} volumes",
                 1024, " MiB", 1),
                ("rss_empty_kib_median", "RSS after start-up, empty", 1024, " MiB", 1)):
            a, b = c.get(key), r.get(key)
            w(f"| {label} | {num(a and a / scale, unit, nd)} | {num(b and b / scale, unit, nd)} "
              f"| {fx(ratio(a, b))} |")
        w("")
        if "create_s" in c:
            w(f"csi-py: created in {c['create_s']} s ({c['create_per_s']}/s; CreateVolume p50 "
              f"{c['create_latency_ms']['p50']} ms, p99 {c['create_latency_ms']['p99']} ms), "
              f"all {c['list_seen']} listed in pages of {rs['page_size']} in {c['list_all_s']} "
              f"s (after a restart {c.get('list_all_after_restart_s')} s), peak RSS "
              f"{num((c.get('hwm_before_restart_kib') or 0) / 1024, ' MiB')} before the "
              f"restart, deleted in {c.get('delete_s')} s, {c.get('left_after_delete')} left.")
            w("")
    else:
        w("(not run)")
        w("")
    w("## Snapshots")
    w("")
    sn = res.get("snapshots")
    if sn:
        w(f"Each pool is a {sn['pool_image_bytes'] >> 30} GiB sparse image in the run's "
          f"temporary directory, formatted (`mkfs.xfs -m reflink=1`, `mkfs.ext4`), attached "
          f"with `losetup` and mounted as csi-py's pool. A {sn['volume_size_bytes'] >> 30} GiB "
          f"thin ext4 volume is published and {sn['data_bytes'] >> 30} GiB is written into it "
          f"with fio (O_DIRECT, fsync at the end); then CreateSnapshot of the published volume. "
          f"The baseline is `cp --sparse=always --reflink=auto` of the same image into the "
          f"same pool followed by `sync` of the copy (the driver also fsyncs its copy), "
          f"timed in the same run; the ratio is csi-py / cp (below 1 is faster). The pool and "
          f"its image are synced before each, and the source image evicted from the page "
          f"cache before `cp`, so both start clean and cold. The pool's image is sparse on "
          f"the host, so the first copy into it also pays for the host allocating blocks: an "
          f"uncounted `cp` runs before the snapshot (its time is `cp_first_touch_s` in "
          f"latest.json), the counted one after it.")
        w("")
        w("| pool | CreateSnapshot | `cp` of the same image | ratio | pool used before | after "
          "| delta | snapshot file allocates | volume file allocates | DeleteSnapshot |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fs in ("xfs pool", "ext4 pool"):
            r = sn.get(fs, {})
            if "error" in r:
                w(f"| {fs} | error: {r['error']} | | | | | | | | |")
                continue
            cp = r.get("cp_baseline_s")
            w(f"| {fs} | {r['create_snapshot_s']:.3f} s | {num(cp, ' s', 3)} | "
              f"{fx(ratio(r['create_snapshot_s'], cp))} | "
              f"{r['pool_used_before_bytes'] / MiB:,.0f} MiB | "
              f"{r['pool_used_after_bytes'] / MiB:,.0f} MiB | "
              f"{r['pool_used_delta_bytes'] / MiB:+,.1f} MiB | "
              f"{r['snapshot_allocated_bytes'] / MiB:,.0f} MiB | "
              f"{r['volume_allocated_bytes'] / MiB:,.0f} MiB | {r['delete_snapshot_s']:.3f} s |")
        w("")
        x, e = sn.get("xfs pool", {}), sn.get("ext4 pool", {})
        if "pool_used_delta_bytes" in x:
            w(f"On xfs the snapshot is a reflink: the pool's used space grows by "
              f"{x['pool_used_delta_bytes'] / MiB:.1f} MiB (the file's "
              f"{x['snapshot_allocated_bytes'] / MiB:,.0f} MiB of blocks are shared with the "
              f"volume). ")
        if "snapshot_allocated_bytes" in e:
            w(f"On ext4 (no reflink) the snapshot is a sparse copy: it allocates "
              f"{e['snapshot_allocated_bytes'] / GiB:.2f} GiB of the volume's "
              f"{sn['volume_size_bytes'] >> 30} GiB, in {e['create_snapshot_s']:.2f} s "
              f"({e['snapshot_allocated_bytes'] / MiB / e['create_snapshot_s']:.0f} MiB/s).")
        w("")
    else:
        w("(not run)")
        w("")
    w("")
    for line in cbt_section(res.get("cbt")):
        w(line)
    w("## Where the time goes")
    w("")
    w(findings.strip() if findings else "(no findings written yet: benchmarks/findings.md)")
    w("")
    w("## The reference")
    w("")
    w("The reference is not fetched or built by any script here, and its code and binary are "
      "never committed. A person builds it by hand: clone "
      "`https://github.com/kubernetes-csi/csi-driver-host-path` outside this repository, check "
      "out the release tag to compare with (this run: "
      f"{res.get('reference_version') or 'none'}), and in that checkout run `go build -ldflags "
      "\"-X main.version=<tag>\" -o /some/dir/hostpathplugin ./cmd/hostpathplugin` (without "
      "the version GetPluginInfo fails with \"Driver is missing version\"). The Go module "
      "proxy does not serve that module, so a plain `go install` does not work. Hand the "
      "binary to the harness with `REFERENCE_BIN=/some/dir/hostpathplugin`. Without it the "
      "harness stops at once and says why. It starts the binary once before any section; "
      "one that does not start, exits, does not answer Probe ready (an unset `ready` counts "
      "as ready, as the spec says), or answers Probe but not GetPluginInfo and the "
      "capability calls stops the run (exit 2, no results written) with the reason and the "
      "end of its log. The harness starts the reference with a "
      "unix endpoint, a node id, a `-statedir` in the run's private temporary directory and "
      "`-enable-attach`, `-enable-topology`, `-enable-volume-expansion`, "
      "`-maxvolumespernode=0` (those its `-help` lists).")
    w("")
    w("## Rerunning")
    w("")
    w("```")
    w("REFERENCE_BIN=/some/dir/hostpathplugin benchmarks/run           # everything, ~6 min")
    w("REFERENCE_BIN=... benchmarks/run --quick   # small counts, ~1.5 min, into "
      "benchmarks/.work/quick/")
    w("REFERENCE_BIN=... benchmarks/run --sections lifecycle,io  # some of: client, lifecycle, "
      "io, restart, snapshots")
    w("REFERENCE_BIN=... benchmarks/run --profile # also py-spy profiles (results/profile/)")
    w("```")
    w("")
    w("`benchmarks/run` needs root (loop devices, mounts) and installs what is missing (fio, "
      "e2fsprogs, xfsprogs, util-linux; matplotlib; the csi-py package). Everything lives in "
      "one private temporary directory; the harness never unmounts or detaches anything "
      "outside it. Every driver runs in its own process group, which is killed, reaped and "
      "checked empty when the driver stops, also after a failed start. The run fails if it "
      "leaves a loop device or mount behind. Raw numbers, per round: "
      "`benchmarks/results/latest.json`.")
    doc = "\n".join(out).rstrip() + "\n"
    summary = ["# Benchmark summary", "", f"Run {res['started']} (loaded machine, load "
               f"{m['loadavg_at_start']} -> {m.get('loadavg_at_end')}); details in "
               "docs/benchmarks.md.", "", *targets(v), ""]
    return doc, "\n".join(summary)


def cbt_section(cbt: dict[str, Any] | None) -> list[str]:
    """Changed-block tracking (benchmarks/cbt.py, results/cbt.json), when it was run."""
    if not cbt:
        return []
    speed = cbt["speedup_vs_full_comparison"]
    return [
        "## Changed-block tracking (GetMetadataDelta)",
        "",
        f"`benchmarks/cbt.py` ({cbt['started']}): on a reflink pool (a sparse image, "
        "`mkfs.xfs -m reflink=1`, loop-mounted as the pool) a "
        f"{cbt['volume_bytes'] >> 30} GiB thin block volume gets "
        f"{cbt['written_before_bytes'] >> 20} MiB of random data in 1 MiB pieces, is "
        f"snapshotted, has {cbt['changed_bytes'] >> 20} MiB changed (half over old data, "
        "half in fresh places) and is snapshotted again. GetMetadataDelta (through gRPC, "
        "every range streamed) reads the two snapshots' extent maps (FIEMAP); the byte "
        "comparison reads both images whole, as a driver without extent maps must. All "
        f"three methods found the same {cbt['changed_ranges']} ranges. Medians of "
        f"{cbt['rounds']} rounds ({cbt.get('full_comparison_rounds', cbt['rounds'])} for "
        "the whole-image comparison), warm page cache (the machine is shared: no cache "
        "drop).",
        "",
        "| method | time | GetMetadataDelta is faster by |",
        "|---|---:|---:|",
        f"| GetMetadataDelta (extent maps) | {cbt['get_metadata_delta_s'] * 1000:.1f} ms | |",
        f"| byte comparison of both whole images | {cbt['full_byte_comparison_s']:.2f} s | "
        f"{speed:,.0f}x |",
        f"| comparison of allocated blocks only (csi-py's fallback for copied snapshots) | "
        f"{cbt['allocated_comparison_s']:.3f} s | "
        f"{cbt['speedup_vs_allocated_comparison']:,.0f}x |",
        f"| GetMetadataAllocated of the second snapshot "
        f"({cbt['allocated_bytes'] >> 20} MiB allocated) | "
        f"{cbt['get_metadata_allocated_s'] * 1000:.1f} ms | |",
        "",
        f"Target: at least 20x faster than the byte comparison: "
        f"{'met' if speed >= 20 else 'NOT met'} ({speed:,.0f}x). Rerun with "
        "`python3 benchmarks/cbt.py` (root), then `python3 benchmarks/report.py`.",
        "",
    ]



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "benchmarks.png"))
    ap.add_argument("--summary", default=os.path.join(HERE, "results", "summary.md"))
    ap.add_argument("--findings", default=os.path.join(HERE, "findings.md"))
    args = ap.parse_args()
    with open(args.results) as fh:
        res = json.load(fh)
    cbt_path = os.path.join(HERE, "results", "cbt.json")
    if os.path.exists(cbt_path):
        with open(cbt_path) as fh:
            res["cbt"] = json.load(fh)
    findings = ""
    if os.path.exists(args.findings):
        with open(args.findings) as fh:
            findings = fh.read()
    chart(View(res), args.png)
    doc, summary = render(res, findings, os.path.relpath(args.png, os.path.dirname(args.doc)))
    with open(args.doc, "w") as fh:
        fh.write(doc)
    with open(args.summary, "w") as fh:
        fh.write(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

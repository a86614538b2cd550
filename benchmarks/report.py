#!/usr/bin/env python3
"""Render benchmarks/results/latest.json into docs/benchmarks.md, docs/benchmarks.png and
benchmarks/results/summary.md. Every csi-py number is shown next to the baseline measured
in the same run and as a ratio against it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20
GiB = 1 << 30

RPCS = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume",
        "NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume")
# csi-py kind -> the reference kind it is compared with (the reference ignores fsType:
# its "mount" volumes are plain directories).
PAIRS = (("ext4", "mount"), ("xfs", "mount"), ("block", "block"))


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


class Baseline:
    """The reference measured in this run, or, when its binary could not be built, the
    floor of its work: the external commands it runs, without its gRPC or state file."""

    def __init__(self, res: dict[str, Any]) -> None:
        life = res.get("lifecycle", {})
        self.real = "reference" in life
        self.life = life.get("reference") or life.get("reference-floor") or {}
        m = res["machine"]
        if self.real:
            self.name = f"reference ({m.get('reference_version')})"
            self.short = "ref"
        else:
            self.name = "reference floor"
            self.short = "floor"
        self.unavailable = m.get("reference_unavailable")


def lifecycle_tables(res: dict[str, Any], base: Baseline) -> tuple[list[str], dict[str, Any]]:
    life = res.get("lifecycle", {})
    csi = life.get("csi-py", {})
    lines: list[str] = []
    facts: dict[str, Any] = {}
    lines += [
        f"| kind | csi-py sequential | {base.short} sequential | ratio | csi-py "
        f"{_clients(res)} clients | {base.short} {_clients(res)} clients | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mine, theirs in PAIRS:
        if mine not in csi:
            continue
        c, b = csi[mine], base.life.get(theirs, {})
        cs, cc = c["sequential"]["per_second"], c["concurrent"]["per_second"]
        bs = b.get("sequential", {}).get("per_second")
        bc = b.get("concurrent", {}).get("per_second")
        facts[mine] = {"seq": cs, "conc": cc, "base_seq": bs, "base_conc": bc,
                       "r_seq": ratio(cs, bs), "r_conc": ratio(cc, bc)}
        lines.append(f"| {mine} ({c['size_bytes'] >> 20} MiB) vs {base.short} {theirs} | "
                     f"{cs:.1f}/s | {num(bs)}/s | {fx(ratio(cs, bs))} | {cc:.1f}/s | "
                     f"{num(bc)}/s | {fx(ratio(cc, bc))} |")
    return lines, facts


def _clients(res: dict[str, Any]) -> int:
    return int(res.get("parameters", {}).get("clients", 8))


def latency_tables(res: dict[str, Any], base: Baseline) -> list[str]:
    csi = res.get("lifecycle", {}).get("csi-py", {})
    lines: list[str] = []
    for mine, theirs in PAIRS:
        if mine not in csi:
            continue
        rpc_c = csi[mine]["sequential"]["rpc"]
        rpc_b = base.life.get(theirs, {}).get("sequential", {}).get("rpc", {})
        lines += [
            f"**{mine}** (csi-py) vs **{theirs}** ({base.short}), sequential, milliseconds:",
            "",
            f"| RPC | p50 | p90 | p99 | {base.short} p50 | {base.short} p90 | "
            f"{base.short} p99 | p50 ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        total_c = total_b = 0.0
        for rpc in RPCS:
            c = rpc_c.get(rpc)
            if not c:
                continue
            b = rpc_b.get(rpc)
            b_txt: tuple[str, ...]
            if b is None and not base.real and rpc in ("NodeStageVolume", "NodeUnstageVolume",
                                                       "ControllerPublishVolume",
                                                       "ControllerUnpublishVolume"):
                b_txt = ("(state file)",) * 3
                r_txt = "n/a"
            else:
                b_txt = tuple(num((b or {}).get(k), nd=2) for k in ("p50", "p90", "p99"))
                r_txt = fx(ratio(c["p50"], (b or {}).get("p50")))
            total_c += c["p50"]
            total_b += (b or {}).get("p50", 0.0)
            lines.append(f"| {rpc} | {c['p50']:.2f} | {c['p90']:.2f} | {c['p99']:.2f} | "
                         f"{b_txt[0]} | {b_txt[1]} | {b_txt[2]} | {r_txt} |")
        lines.append(f"| sum of p50s | {total_c:.2f} | | | {total_b:.2f} | | | "
                     f"{fx(ratio(total_c, total_b))} |")
        lines.append("")
    return lines


IO_JOBS = (("seq_write_1m", "bw_mib_s", "MiB/s"), ("seq_read_1m", "bw_mib_s", "MiB/s"),
           ("rand_read_4k", "iops", "IOPS"), ("rand_write_4k", "iops", "IOPS"))


def io_table(res: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    io = res.get("io")
    if not io:
        return ["(not run)"], {}
    targets = io["targets"]
    pool_key = next((k for k in targets if k.startswith("pool filesystem")), "")
    pool = targets.get(pool_key, {})
    ref_key = next((k for k in targets if k.startswith("reference ")), None)
    lines = [
        "| where | " + " | ".join(f"{j.replace('_', ' ')} ({u})" for j, _, u in IO_JOBS) + " |",
        "|---|" + "---:|" * len(IO_JOBS),
    ]
    facts: dict[str, Any] = {}
    for name, jobs in targets.items():
        cells = []
        for job, key, _unit in IO_JOBS:
            v = jobs.get(job, {}).get(key)
            r = ratio(v, pool.get(job, {}).get(key))
            cells.append(f"{num(v, nd=0)} ({fx(r)} pool)" if name != pool_key
                         else num(v, nd=0))
            facts.setdefault(name, {})[job] = {"value": v, "vs_pool": r,
                                               "vs_ref": ratio(v, targets.get(ref_key or "", {})
                                                               .get(job, {}).get(key))}
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, facts


def chart(res: dict[str, Any], base: Baseline, life: dict[str, Any], io: dict[str, Any],
          path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 6))
    # 1. lifecycle throughput
    ax = axes[0]
    kinds = [k for k, _ in PAIRS if k in life]
    xs = range(len(kinds))
    w = 0.2
    series = [("csi-py sequential", [life[k]["seq"] for k in kinds], "#1f77b4"),
              (f"{base.short} sequential", [life[k]["base_seq"] or 0 for k in kinds], "#aec7e8"),
              (f"csi-py {_clients(res)} clients", [life[k]["conc"] for k in kinds], "#d62728"),
              (f"{base.short} {_clients(res)} clients", [life[k]["base_conc"] or 0 for k in kinds],
               "#ff9896")]
    for i, (label, vals, color) in enumerate(series):
        bars = ax.bar([x + (i - 1.5) * w for x in xs], vals, w, label=label, color=color)
        if i in (0, 2):
            base_vals = series[i + 1][1]
            for bar, v, bv in zip(bars, vals, base_vals, strict=True):
                if bv:
                    ax.annotate(f"{v / bv:.2f}x", (bar.get_x() + bar.get_width() / 2, v),
                                ha="center", va="bottom", fontsize=8)
    pairs = dict(PAIRS)
    ax.set_xticks(list(xs), [f"{k}\nvs {base.short} {pairs[k]}" for k in kinds])
    ax.set_ylabel("volume lifecycles per second")
    ax.set_title("Lifecycle throughput (create .. delete)")
    ax.legend(fontsize=8)
    # 2. per-RPC p50 latency, block and ext4
    ax = axes[1]
    csi = res.get("lifecycle", {}).get("csi-py", {})
    labels, mine, theirs = [], [], []
    for k, theirs_kind in (("block", "block"), ("ext4", "mount")):
        if k not in csi:
            continue
        for rpc in ("CreateVolume", "NodeStageVolume", "NodePublishVolume",
                    "NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume"):
            c = csi[k]["sequential"]["rpc"].get(rpc, {}).get("p50")
            b = base.life.get(theirs_kind, {}).get("sequential", {}).get("rpc", {}).get(
                rpc, {}).get("p50")
            if c is None:
                continue
            labels.append(f"{k} {rpc.replace('Volume', '').replace('Node', 'N.')}")
            mine.append(c)
            theirs.append(b or 0)
    ys = range(len(labels))
    ax.barh([y - 0.2 for y in ys], mine, 0.4, label="csi-py p50", color="#1f77b4")
    ax.barh([y + 0.2 for y in ys], theirs, 0.4, label=f"{base.short} p50", color="#aec7e8")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("milliseconds (log); dotted: 1 ms")
    ax.set_title("Per-RPC median latency, sequential")
    ax.legend(fontsize=8)
    # 3. I/O ratio vs the pool filesystem
    ax = axes[2]
    names = [n for n in io if not n.startswith("pool filesystem")]
    jobs = [j for j, _, _ in IO_JOBS]
    w = 0.8 / max(len(names), 1)
    top = 1.6
    for i, n in enumerate(names):
        vals = [io[n][j]["vs_pool"] or 0 for j in jobs]
        xs_ = [x + (i - (len(names) - 1) / 2) * w for x in range(len(jobs))]
        ax.bar(xs_, [min(v, top) for v in vals], w,
               label=n if len(n) < 40 else n[:37] + "...")
        for x, v in zip(xs_, vals, strict=True):
            ax.annotate(f"{v:.2f}" if v < top else f"{v:.1f}\n(cut)",
                        (x, min(v, top)), ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, top + 0.25)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.9, color="green", ls="--", lw=1, label="target 0.9")
    ax.set_xticks(range(len(jobs)), [j.replace("_", " ") for j in jobs])
    ax.set_ylabel("ratio to the pool filesystem (O_DIRECT fio)")
    ax.set_title("I/O inside a volume vs the pool filesystem")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.suptitle(f"csi-py vs {base.name}, same run, {res['machine']['cores']} cores, "
                 f"{res['started'][:10]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict[str, Any], base: Baseline, life: dict[str, Any],
            io: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, ratio, verdict) rows."""
    rows = []

    def rel(f: dict[str, Any], need: float) -> str:
        vals = [r for r in (f["r_seq"], f["r_conc"]) if r is not None]
        if not vals:
            return "not measured"
        ok = all(r >= need for r in vals)
        if base.real:
            return "**met**" if ok else "**missed**"
        if ok:
            return "**met** (against the floor, so also against the reference)"
        # The reference's time per lifecycle is at least the floor's; how much more would
        # it need for csi-py to meet the target?
        extra = need * 1e3 / f["seq"] - 1e3 / f["base_seq"]
        return (f"**missed** unless the reference spends {extra:.1f} ms more per lifecycle "
                f"than its commands take (sequential: csi-py {1e3 / f['seq']:.1f} ms, floor "
                f"{1e3 / f['base_seq']:.1f} ms)")

    b = life.get("block")
    if b:
        rows.append(("Block-volume lifecycle throughput >= 3x the reference",
                     f"{b['seq']:.1f}/s sequential, {b['conc']:.1f}/s with {_clients(res)} "
                     f"clients ({base.short}: {num(b['base_seq'])}/s, {num(b['base_conc'])}/s)",
                     f"{fx(b['r_seq'])}, {fx(b['r_conc'])}",
                     rel(b, 3.0)))
    e = life.get("ext4")
    if e:
        rows.append(("Mount-volume (ext4, formatted at first stage) lifecycle throughput >= the "
                     "reference's",
                     f"{e['seq']:.1f}/s sequential, {e['conc']:.1f}/s with {_clients(res)} "
                     f"clients ({base.short}: {num(e['base_seq'])}/s, {num(e['base_conc'])}/s)",
                     f"{fx(e['r_seq'])}, {fx(e['r_conc'])}",
                     rel(e, 1.0)))
    csi = res.get("lifecycle", {}).get("csi-py", {})
    if csi:
        p50s = {k: csi[k]["sequential"]["rpc"]["NodePublishVolume"]["p50"]
                for k in ("ext4", "xfs", "block") if k in csi}
        bp = {k: base.life.get(t, {}).get("sequential", {}).get("rpc", {}).get(
            "NodePublishVolume", {}).get("p50") for k, t in PAIRS if k in p50s}
        rows.append(("NodePublishVolume p50 <= 1 ms (reference ~8 ms)",
                     ", ".join(f"{k} {v:.2f} ms" for k, v in p50s.items()),
                     ", ".join(f"{k} {fx(ratio(v, bp.get(k)))}" for k, v in p50s.items()),
                     "**met**" if max(p50s.values()) <= 1.0 else "**missed**"))
    vol = io.get("csi-py ext4")
    if vol:
        sw = vol["seq_write_1m"]["vs_pool"]
        rr = vol["rand_read_4k"]["vs_pool"]
        rw = vol["rand_write_4k"]["vs_pool"]
        t = res["io"]["targets"]["csi-py ext4"]
        rows.append(("Sequential write and random 4 KiB IOPS inside a volume >= 90% of the pool "
                     "filesystem's",
                     f"seq write {t['seq_write_1m']['bw_mib_s']:.0f} MiB/s, rand read "
                     f"{t['rand_read_4k']['iops']:.0f} IOPS, rand write "
                     f"{t['rand_write_4k']['iops']:.0f} IOPS (ext4 volume)",
                     f"{fx(sw)}, {fx(rr)}, {fx(rw)} of the pool fs",
                     "**met**" if min(sw or 0, rr or 0, rw or 0) >= 0.9 else
                     "**missed**" + (" (seq write met)" if (sw or 0) >= 0.9 else "")))
    sc = res.get("scale")
    if sc:
        rss = max(v for k, v in sc.items() if k.startswith(("rss_", "hwm_")) and v)
        rows.append((f"{sc['volumes']:,} volumes: all ListVolumes pages < 1 s",
                     f"{sc['list_pages']} pages of {sc['page_size']} in {sc['list_all_s']:.3f} s "
                     f"(after restart {sc['list_all_after_restart_s']:.3f} s)",
                     f"{sc['list_all_s']:.2f}x of the limit",
                     "**met**" if max(sc["list_all_s"], sc["list_all_after_restart_s"]) < 1
                     else "**missed**"))
        rows.append((f"{sc['volumes']:,} volumes: start-up < 2 s",
                     f"{sc['startup_s']:.3f} s to Probe ready (empty pool: "
                     f"{sc['startup_empty_pool_s']:.3f} s)",
                     f"{sc['startup_s'] / 2:.2f}x of the limit",
                     "**met**" if sc["startup_s"] < 2 else "**missed**"))
        rows.append((f"{sc['volumes']:,} volumes: RSS < 150 MiB",
                     f"{rss / 1024:.1f} MiB peak (VmHWM; {sc['rss_empty_pool_kib'] / 1024:.1f} "
                     f"MiB with an empty pool)",
                     f"{rss / 1024 / 150:.2f}x of the limit",
                     "**met**" if rss / 1024 < 150 else "**missed**"))
    if not base.real:
        rows = [(a, b_, c + (" (floor)" if "x" in c and "limit" not in c and "pool" not in c
                             else ""), d) for a, b_, c, d in rows]
    return rows


def render(res: dict[str, Any], profile: dict[str, Any] | None, png_rel: str
           ) -> tuple[str, str]:
    base = Baseline(res)
    m = res["machine"]
    life_lines, life = lifecycle_tables(res, base)
    io_lines, io = io_table(res)
    rows = targets(res, base, life, io)
    p = res.get("parameters", {})
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w("csi-py measured side by side with the Go reference driver, "
      "[csi-driver-host-path](https://github.com/kubernetes-csi/csi-driver-host-path), "
      "on one machine in one run. Every number below comes from "
      "`benchmarks/results/latest.json` of that run; rerun with `benchmarks/run` "
      "(see [Rerunning](#rerunning)).")
    w("")
    if not base.real:
        w("> **The reference binary could not be built on this machine**: "
          f"{(base.unavailable or '').strip()}")
        w(">")
        w("> In its place the harness measured the **reference floor** in the same run: the "
          "external commands csi-driver-host-path runs for each volume (block: `fallocate`, "
          "`losetup -j`, `losetup -f --show`, bind `mount` + bind-remount `mount` the way "
          "k8s mount-utils does it, `umount`, `losetup -d`; mount volumes: `mkdir`, the same "
          "two `mount`s, `umount`, `rm -r`), run directly without its gRPC server or its JSON "
          "state file. The reference does at least this work, so its throughput can only be "
          "lower and its latencies only higher: a csi-py/floor ratio is a **lower bound** of "
          "the csi-py/reference ratio. For I/O, the reference's block volume data path is "
          "reproduced exactly (a `fallocate`d file on `losetup` without direct I/O); it "
          "involves no driver code. With a reference binary (`REFERENCE_BIN=...` or a "
          "checkout in `benchmarks/.work/src/csi-driver-host-path`, see below) the same "
          "command measures the real driver instead.")
        w("")
    w("![csi-py vs the reference](" + png_rel + ")")
    w("")
    w("## Targets")
    w("")
    w("| target | measured | ratio | verdict |")
    w("|---|---|---|---|")
    for a, b, c, d in rows:
        w(f"| {a} | {b} | {c} | {d} |")
    w("")
    w("Ratios are csi-py / baseline: above 1 is better for throughput and I/O, below 1 is "
      "better for latencies. Latencies are medians (p50) unless a column says otherwise.")
    w("")
    w("Reading these numbers:")
    w("")
    la, le = m.get("loadavg_at_start"), m.get("loadavg_at_end")
    w(f"- The machine is shared (load average {la} at the start, {le} at the end, on "
      f"{m['cores']} cores), so numbers move between runs. The lifecycle section therefore runs "
      f"every driver and kind in {p.get('rounds', 3)} interleaved rounds (per-round "
      f"throughputs are in latest.json), and fio runs each job on all targets back to back.")
    noop = res.get("lifecycle", {}).get("csi-py", {}).get("_noop_rpc", {}).get("GetPluginInfo")
    pub = (profile or {}).get("publish", {}).get("NodePublishVolume", {}).get("handler_ms", {})
    if noop:
        w(f"- An RPC that does nothing (GetPluginInfo) takes {noop['p50']:.2f} ms p50 from the "
          f"Python client to the Python server and back: that much of every csi-py latency is "
          f"gRPC and request dispatch, not driver work."
          + (f" In the profiled run below (py-spy attached, debug logging on) "
             f"NodePublishVolume's handler itself, by the server's own timing, took "
             f"{pub['p50']:.2f} ms p50." if pub.get("p50") is not None else ""))
    io_t = res.get("io", {}).get("targets", {})
    raw = next((v for k, v in io_t.items() if k.startswith("losetup direct-io")), None)
    pool_v = next((v for k, v in io_t.items() if k.startswith("pool filesystem")), None)
    if raw and pool_v:
        w(f"- I/O: a loop device that `losetup` configures like csi-py's (direct I/O, 4 KiB "
          f"sectors), with no driver involved, reaches "
          f"{raw['rand_read_4k']['iops'] / pool_v['rand_read_4k']['iops']:.2f}x the pool's "
          f"random-read and "
          f"{raw['rand_write_4k']['iops'] / pool_v['rand_write_4k']['iops']:.2f}x its "
          f"random-write IOPS in this run: the kernel's loop driver sets the ceiling for any "
          f"loop-backed volume. The reference's block volumes are buffered loop devices, so "
          f"O_DIRECT inside them still lands in the page cache: their numbers above the pool's "
          f"are cache speed, not disk speed, and are lost on a crash.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for key in ("cpu_model", "cores", "memory_gib", "kernel", "distro", "python", "grpcio",
                "fio", "go", "tmp_filesystem", "csi_py_version", "reference_version"):
        w(f"| {key} | {m.get(key)} |")
    w(f"| run | {res['started']}, {res.get('total_seconds')} s "
      f"({', '.join(f'{k} {v} s' for k, v in res.get('section_seconds', {}).items())}) |")
    w("")
    w("## Volume lifecycle")
    w("")
    w(f"One lifecycle = CreateVolume, ControllerPublishVolume, NodeStageVolume, "
      f"NodePublishVolume, NodeUnpublishVolume, NodeUnstageVolume, ControllerUnpublishVolume, "
      f"DeleteVolume over the driver's unix socket (csi_py.rpc.client, the same code for "
      f"every driver). Sequential: {p.get('seq')} lifecycles from one client; concurrent: "
      f"{_clients(res)} clients with their own channel, {p.get('per_client')} lifecycles each. "
      f"Two uncounted warm-up lifecycles first. ext4 and block volumes are 64 MiB, xfs "
      f"300 MiB (its minimum); csi-py formats ext4/xfs at the first NodeStageVolume. "
      f"The reference's mount volumes are directories (it ignores fsType).")
    w("")
    w("Throughput, lifecycles per second:")
    w("")
    out += life_lines
    w("")
    w("Per-RPC latency:")
    w("")
    noop = {k: v.get("_noop_rpc") for k, v in res.get("lifecycle", {}).items()
            if isinstance(v, dict) and v.get("_noop_rpc")}
    if noop:
        w("RPCs that do no work show the floor that gRPC, the Python client and the server's "
          "request handling put under every call (500 calls each, milliseconds):")
        w("")
        w("| driver | RPC | p50 | p90 | p99 |")
        w("|---|---|---:|---:|---:|")
        for drv_name, rpcs in noop.items():
            for rpc, st in rpcs.items():
                w(f"| {drv_name} | {rpc} | {st['p50']:.3f} | {st['p90']:.3f} | "
                  f"{st['p99']:.3f} |")
        w("")
    out += latency_tables(res, base)
    w("## I/O through a volume")
    w("")
    if res.get("io"):
        w(f"fio {m.get('fio')}, O_DIRECT (`--direct=1 --ioengine=libaio`), "
          f"{res['io']['runtime_s']} s per job over {res['io']['size_bytes'] >> 20} MiB: "
          "sequential 1 MiB write and read (iodepth 4), random 4 KiB read and write "
          "(iodepth 32). Volumes are twice that size; the ext4 volume runs fio on a file inside "
          "the published mount, block volumes on the published device node. The pool "
          f"filesystem is {m.get('tmp_filesystem')} on the machine's disk; the `losetup` rows "
          "are loop devices made by `losetup` over a file in the same filesystem, with no "
          "driver involved, to separate the loop driver's own cost from csi-py's.")
        w("")
    out += io_lines
    w("")
    sc = res.get("scale")
    w("## Scale: 10,000 volumes")
    w("")
    if sc:
        w(f"{sc['volumes']:,} thin {sc['volume_size_bytes'] >> 20} MiB ext4 volumes created by "
          f"{sc['clients']} concurrent clients in one csi-py catalog, then ListVolumes paged "
          f"with max_entries={sc['page_size']}, then a restart (SIGTERM, start, time until "
          f"Probe answers ready: start-up includes reconciling every volume with the kernel), "
          f"then all deleted. RSS is VmRSS/VmHWM from /proc/PID/status.")
        w("")
        w("| measure | value |")
        w("|---|---:|")
        items = [
            ("create all", f"{sc['create_s']:.1f} s ({sc['create_per_s']:.0f}/s; p50 "
                           f"{sc['create_latency_ms']['p50']:.1f} ms, p99 "
                           f"{sc['create_latency_ms']['p99']:.1f} ms per call)"),
            ("list all pages", f"{sc['list_all_s']:.3f} s ({sc['list_pages']} pages, p50 "
                               f"{sc['list_page_ms']['p50']:.1f} ms, max "
                               f"{sc['list_page_ms']['max']:.1f} ms per page)"),
            ("list all pages after restart", f"{sc['list_all_after_restart_s']:.3f} s"),
            ("stop (SIGTERM until exit)", f"{sc['stop_s']:.3f} s"),
            ("start-up until Probe ready", f"{sc['startup_s']:.3f} s"),
            ("start-up, empty pool (same run)", f"{sc['startup_empty_pool_s']:.3f} s"),
            ("RSS, empty pool", f"{sc['rss_empty_pool_kib'] / 1024:.1f} MiB"),
            ("RSS after creating", f"{sc['rss_after_create_kib'] / 1024:.1f} MiB"),
            ("RSS after listing", f"{sc['rss_after_list_kib'] / 1024:.1f} MiB"),
            ("peak RSS before restart (VmHWM)", f"{sc['hwm_before_restart_kib'] / 1024:.1f} MiB"),
            ("RSS after restart + listing", f"{sc['rss_after_restart_list_kib'] / 1024:.1f} MiB"),
            ("delete all", f"{sc['delete_s']:.1f} s ({sc['delete_per_s']:.0f}/s)"),
            ("volumes left after delete", str(sc["left_after_delete"])),
        ]
        for a, b in items:
            w(f"| {a} | {b} |")
        w("")
        w("The reference is not run at this scale: its state is one JSON file rewritten "
          "on every change, so each call costs O(volumes).")
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
    for line in cbt_section(res.get("cbt")):
        w(line)
    if profile:
        w("## Where csi-py spends its time")
        w("")
        w(profile.get("markdown", ""))
        w("")
    w("## Rerunning")
    w("")
    w("As root on a Debian machine, from the repository root:")
    w("")
    w("```sh")
    w("benchmarks/run              # everything, about 10 minutes on 2 cores")
    w("benchmarks/run --quick      # small counts, to try the harness (.work/quick/)")
    w("benchmarks/run --sections lifecycle,io      # some of: lifecycle, io, scale, snapshots")
    w("benchmarks/run --profile    # also profile csi-py with py-spy (results/profile/)")
    w("python3 benchmarks/report.py               # re-render docs from latest.json")
    w("```")
    w("")
    w("`benchmarks/run` installs what is missing (fio, e2fsprogs, xfsprogs, util-linux; "
      "matplotlib; the csi-py package), then `benchmarks/setup_reference.sh` builds the "
      "reference into the git-ignored `benchmarks/.work/reference/`: it takes `REFERENCE_BIN` "
      "if set, else builds a checkout at `REFERENCE_SRC` (default "
      "`benchmarks/.work/src/csi-driver-host-path`), else makes a throwaway Go module that "
      "requires the newest release tag of `github.com/kubernetes-csi/csi-driver-host-path` "
      "from the Go module proxy, copies the replace directives of the driver's own go.mod "
      "and builds `cmd/hostpathplugin`. The reference is started with a unix endpoint, a node "
      "id, a `-statedir` in the run's temporary directory and `-enable-attach`, "
      "`-enable-topology`, `-enable-volume-expansion` (whichever of these flags its `-help` "
      "lists). When no reference can be had, the run measures the reference floor instead "
      "and says so here.")
    w("")
    w("Each run works in its own temporary directory (drivers' pools and state, staging and "
      "target paths, the snapshot pools' images), touches no loop device or mount outside it, "
      "and fails if it leaves one behind "
      f"(this run: {len(res.get('leftovers', []))} left). Counts and sizes are flags of "
      "`benchmarks/harness.py` (`--help`).")
    w("")
    doc = "\n".join(out)

    summary = [f"# Benchmark summary ({res['started']})", "",
               f"csi-py {m.get('csi_py_version')} vs {base.name}; {m['cpu_model']}, "
               f"{m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}.", ""]
    if not base.real:
        summary += [f"Reference unavailable ({(base.unavailable or '').strip()}); ratios are "
                    "against the reference floor (its external commands alone), a lower "
                    "bound of the true ratio.", ""]
    summary += ["| target | measured | ratio | verdict |", "|---|---|---|---|"]
    summary += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    cbt = res.get("cbt")
    if cbt:
        summary += ["", f"Changed-block tracking: GetMetadataDelta of a "
                    f"{cbt['volume_bytes'] >> 30} GiB volume with "
                    f"{cbt['changed_bytes'] >> 20} MiB changed took "
                    f"{cbt['get_metadata_delta_s'] * 1000:.1f} ms, "
                    f"{cbt['speedup_vs_full_comparison']:,.0f}x faster than a byte "
                    f"comparison ({cbt['full_byte_comparison_s']:.1f} s)."]
    summary += ["", "Details, tables and the chart: docs/benchmarks.md."]
    return doc, "\n".join(summary) + "\n"


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
    args = ap.parse_args()
    with open(args.results) as fh:
        res = json.load(fh)
    profile = None
    prof_path = os.path.join(os.path.dirname(args.results), "profile", "profile.json")
    if os.path.exists(prof_path):
        with open(prof_path) as fh:
            profile = json.load(fh)
    cbt_path = os.path.join(os.path.dirname(args.results), "cbt.json")
    if os.path.exists(cbt_path):
        with open(cbt_path) as fh:
            res["cbt"] = json.load(fh)
    base = Baseline(res)
    _, life = lifecycle_tables(res, base)
    _, io = io_table(res)
    chart(res, base, life, io, args.png)
    doc, summary = render(res, profile, os.path.relpath(args.png, os.path.dirname(args.doc)))
    with open(args.doc, "w") as fh:
        fh.write(doc)
    with open(os.path.join(os.path.dirname(args.results), "summary.md"), "w") as fh:
        fh.write(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

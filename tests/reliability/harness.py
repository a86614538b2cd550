"""Helpers for the reliability tests: a driver in its own process (so it can be killed),
volume life-cycle steps over gRPC, data checksums, and a check that the catalog, the
pool directory, loop devices and mounts agree.

Everything is scoped to one test's directory: nothing outside it is ever counted,
unmounted or detached.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py.core.crashpoints import ENV as CRASH_ENV
from csi_py.domain.snapshot_ids import file_key
from csi_py.rpc.client import Client
from tests.conftest import NODE_ID
from tests.kernel_leaks import loops_under, mounts_under
from tests.lifecycle import MiB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLED = -signal.SIGKILL


# Crash points at which a driver was seen to die (SIGKILL) and recover; the crash-point
# tests add to it and tests/reliability/conftest.py prints the tally.
EXERCISED: set[str] = set()


class FastClient(Client):
    """A Client whose channel retries a refused connection within milliseconds, not
    gRPC's default second: a restarted driver answers as soon as it listens."""

    def __post_init__(self) -> None:
        from csi_py._proto import csi_pb2_grpc

        self.channel = grpc.insecure_channel("unix:" + self.endpoint, options=[
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 100),
        ])
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)


# --- a driver in a subprocess ------------------------------------------------------------


class DriverProcess:
    """`python -m csi_py serve` on a private pool in `workdir`, optionally armed with a
    crash point. Every start logs to its own file in `workdir`."""

    def __init__(self, workdir: str, *extra_args: str, new_session: bool = False) -> None:
        # new_session: the driver leads its own process group, which a test may kill
        # whole (driver and the tools it runs), as a container runtime does.
        self.new_session = new_session
        self.env_extra: dict[str, str] = {}
        self.workdir = workdir
        self.socket = os.path.join(workdir, "csi.sock")
        self.pool = os.path.join(workdir, "pool")
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self.starts = 0
        self.log_path = ""

    def start(self, crash_point: str = "", timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        env.update(self.env_extra)
        if crash_point:
            env[CRASH_ENV] = crash_point
        self.starts += 1
        self.log_path = os.path.join(self.workdir, f"driver-{self.starts}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{self.socket}",
                 "--node-id", NODE_ID, "--pool", self.pool, "--filesystems", "ext4,xfs",
                 "--log-level", "INFO", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                start_new_session=self.new_session,
            )
        self.client = FastClient(self.socket)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.identity.Probe(pb.ProbeRequest(), timeout=2).ready.value:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"driver not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def reconcile_summary(self) -> dict[str, int]:
        """The counts from this start's `reconciled: ...` log line."""
        for line in self.log().splitlines():
            if "reconciled:" in line:
                pairs = line.split("reconciled:", 1)[1].split()
                return {k: int(v) for k, v in (p.split("=") for p in pairs)}
        raise AssertionError(f"no reconcile summary in the log:\n{self.log()}")

    def wait_killed(self, timeout: float = 15.0) -> int | None:
        """The exit code once the process has exited, None if it is still running."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (graceful) if running; SIGKILL only this process if it hangs."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --- requests ------------------------------------------------------------------------------


def retry_aborted(call: Callable[[], Any], attempts: int = 200, pause: float = 0.01) -> Any:
    """Call until it stops answering ABORTED, as the sidecars do (with a short back-off)."""
    for i in range(attempts):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED or i == attempts - 1:
                raise
            time.sleep(pause * (1 + random.random()))
    raise AssertionError("unreachable")


# --- data -----------------------------------------------------------------------------------


def payload(seed: str, size: int = MiB) -> bytes:
    """Deterministic pseudo-random bytes for `seed`."""
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def data_path(target: str, kind: str, name: str = "data.bin") -> str:
    return target if kind == "block" else os.path.join(target, name)


def write_data(target: str, kind: str, data: bytes, name: str = "data.bin") -> str:
    """Write `data` to a published volume (a file on a filesystem, or the block device at
    offset 0), fsync it, and return its sha256."""
    path = data_path(target, kind, name)
    flags = os.O_WRONLY | (0 if kind == "block" else os.O_CREAT | os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def read_digest(target: str, kind: str, length: int, name: str = "data.bin") -> str:
    """sha256 of the first `length` bytes, read from the device rather than the cache."""
    fd = os.open(data_path(target, kind, name), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return hashlib.sha256(os.pread(fd, length, 0)).hexdigest()
    finally:
        os.close(fd)


def fsck_clean(image: str, fs_type: str = "ext4") -> tuple[bool, str]:
    """Whether an (unattached) image passes a read-only filesystem check (e2fsck -fn,
    xfs_repair -n)."""
    argv = ["e2fsck", "-fn", image] if fs_type == "ext4" else ["xfs_repair", "-n", "-f", image]
    result = subprocess.run(argv, capture_output=True, text=True,
                            timeout=120, env={"LC_ALL": "C", "PATH": os.environ["PATH"]})
    return result.returncode == 0, result.stdout + result.stderr


# --- agreement of catalog, pool, loop devices and mounts -----------------------------------


def catalog_rows(pool: str) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of each catalog table (read with a separate connection)."""
    db = sqlite3.connect(os.path.join(pool, "catalog.db"), timeout=30)
    try:
        return {
            "volumes": db.execute("SELECT id, state FROM volumes").fetchall(),
            "snapshots": db.execute("SELECT id, state FROM snapshots").fetchall(),
            "groups": db.execute("SELECT id, state FROM group_snapshots").fetchall(),
            "attachments": db.execute("SELECT volume_id FROM attachments").fetchall(),
            "stagings": db.execute("SELECT volume_id, state, device FROM stagings").fetchall(),
        }
    finally:
        db.close()


def disagreements(workdir: str, pool: str, *, expect_empty: bool = False,
                  node: bool = True) -> list[str]:
    """Everything on which the catalog, the pool directory, the loop devices and the
    mounts of this workdir disagree. With `expect_empty`, any volume, snapshot, loop
    device or mount at all is reported too (the state after every life ended). Without
    `node`, stagings and loop devices are not compared (a node call may be half done,
    waiting for kubelet's retry)."""
    problems: list[str] = []
    rows = catalog_rows(pool)
    volumes = {vid: state for vid, state in rows["volumes"]}
    snaps = {sid: state for sid, state in rows["snapshots"]}
    for vid, state in volumes.items():
        if state != "ready":
            problems.append(f"volume {vid} left in state {state}")
    for sid, state in snaps.items():
        if state != "ready":
            problems.append(f"snapshot {sid} left in state {state}")
    for gid, state in rows["groups"]:
        if state != "ready":
            problems.append(f"group {gid} left in state {state}")
    files = set(os.listdir(os.path.join(pool, "volumes")))
    want = {vid + ".img" for vid in volumes}
    problems += [f"volume file without a catalog row: {f}" for f in sorted(files - want)]
    problems += [f"volume row without a file: {f}" for f in sorted(want - files)]
    sfiles = set(os.listdir(os.path.join(pool, "snapshots")))
    swant = {file_key(sid) + ".img" for sid in snaps}
    problems += [f"snapshot file without a catalog row: {f}" for f in sorted(sfiles - swant)]
    problems += [f"snapshot row without a file: {f}" for f in sorted(swant - sfiles)]
    # Every image describes itself: one record per volume and snapshot, no more.
    records = set(os.listdir(os.path.join(pool, "records")))
    rwant = {file_key(i) + ".json" for i in (*volumes, *snaps)}
    problems += [f"record without a catalog row: {f}" for f in sorted(records - rwant)]
    problems += [f"catalog row without a record: {f}" for f in sorted(rwant - records)]
    staged = {vid: (state, device) for vid, state, device in rows["stagings"]}
    if not node:
        return problems
    for vid, (state, _) in staged.items():
        if state not in ("staged", "adopted"):  # adopted: staged, learned from the kernel
            problems.append(f"staging of {vid} left in state {state}")
    loops = loops_under(os.path.join(pool, "volumes"))
    for dev in loops:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as fh:
            backing = fh.read().strip()
        vid = os.path.basename(backing).removesuffix(".img")
        if vid not in staged:
            problems.append(f"loop device {dev} ({backing}) without a staging record")
    for vid, (_, device) in staged.items():
        if device not in loops:
            problems.append(f"staged volume {vid} has no loop device (recorded {device})")
    if expect_empty:
        problems += [f"volume {v} still exists" for v in volumes]
        problems += [f"snapshot {s} still exists" for s in snaps]
        problems += [f"attachment of {a[0]} still exists" for a in rows["attachments"]]
        problems += [f"staging of {v} still exists" for v in staged]
        problems += [f"loop device {d} still attached" for d in loops]
        # (A pool that is a filesystem of its own is mounted at the pool path.)
        problems += [f"mount {m} still there" for m in mounts_under(workdir) if m != pool]
    return problems

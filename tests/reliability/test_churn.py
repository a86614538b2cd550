"""Churn: at least 1,000 whole volume lifecycles by 8 concurrent clients against one
driver (in its own process, as in production), retrying ABORTED like the sidecars.

A lifecycle is: CreateVolume, ControllerPublishVolume, NodeStageVolume,
NodePublishVolume, write and read back a little data, NodeUnpublishVolume,
NodeUnstageVolume, ControllerUnpublishVolume, DeleteVolume. Most volumes are raw block
(cheapest); every fourth is ext4 (mkfs and a real mount).

The run must end with zero unexpected errors and zero leaks: no volume, snapshot, file,
loop device or mount left, and catalog, pool, loop devices and mounts in agreement.

Scale it with CSI_PY_CHURN_LIFECYCLES and CSI_PY_CHURN_CLIENTS; docs/reliability.md
has the numbers measured on the development machine.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.conftest import needs_root
from tests.kernel_leaks import loops_under, mounts_under
from tests.lifecycle import Volumes
from tests.reliability.harness import (
    DriverProcess,
    disagreements,
    read_digest,
    retry_aborted,
    write_data,
)

pytestmark = [pytest.mark.integration, pytest.mark.churn, needs_root()]

LIFECYCLES = int(os.environ.get("CSI_PY_CHURN_LIFECYCLES", "1000"))
CLIENTS = int(os.environ.get("CSI_PY_CHURN_CLIENTS", "8"))
EXT4_EVERY = 4
SIZE = 16 << 20  # the smallest ext4 the driver makes; block volumes the same
DATA = 64 << 10


class Churn:
    def __init__(self, driver: DriverProcess, workdir: str) -> None:
        self.d = driver
        self.w = workdir
        self.next = 0
        self.lock = threading.Lock()
        self.done = 0
        self.errors: list[str] = []
        self.aborted_retries = 0
        self.slowest = 0.0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= LIFECYCLES:
                return None
            self.next += 1
            return self.next - 1

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        tries = [0]

        def once():  # type: ignore[no-untyped-def]
            tries[0] += 1
            return fn(*args)

        try:
            return retry_aborted(once)
        finally:
            if tries[0] > 1:
                with self.lock:
                    self.aborted_retries += tries[0] - 1

    def client_loop(self, k: int) -> None:
        v = Volumes(self.d.client, timeout=60)
        home = os.path.join(self.w, f"c{k}")
        os.mkdir(home)
        while (n := self.take()) is not None:
            kind = "ext4" if n % EXT4_EVERY == 0 else "block"
            staging, target = os.path.join(home, f"s{n}"), os.path.join(home, f"t{n}")
            started = time.monotonic()
            vid = ""
            try:
                vid = self.call(v.create, f"churn-{n}", kind, SIZE).volume_id
                ctx = self.call(v.attach, vid, kind)
                os.mkdir(staging)  # kubelet makes the staging directory...
                self.call(v.stage, vid, kind, staging, ctx)
                self.call(v.publish, vid, kind, staging, target)
                data = os.urandom(DATA)
                digest = write_data(target, kind, data)
                assert read_digest(target, kind, DATA) == digest, "read back differs"
                self.call(v.unpublish, vid, target)
                self.call(v.unstage, vid, staging)
                os.rmdir(staging)  # ...and removes it
                self.call(v.detach, vid)
                self.call(v.delete, vid)
            except (grpc.RpcError, AssertionError, OSError) as exc:
                detail = exc.details() if isinstance(exc, grpc.RpcError) else exc
                with self.lock:
                    self.errors.append(f"lifecycle {n} ({kind}, {vid}): {detail}")
                self.clean_up(v, vid, staging, target)
                continue
            with self.lock:
                self.done += 1
                self.slowest = max(self.slowest, time.monotonic() - started)

    def clean_up(self, v: Volumes, vid: str, staging: str, target: str) -> None:
        """After an error: take the volume down so the leak count is about the driver."""
        if not vid:
            return
        for step in (lambda: v.unpublish(vid, target), lambda: v.unstage(vid, staging),
                     lambda: v.detach(vid), lambda: v.delete(vid)):
            try:
                retry_aborted(step)
            except grpc.RpcError:
                pass


@pytest.mark.timeout(400)
def test_churn_of_a_thousand_lifecycles_has_no_errors_and_no_leaks(
    driver_process: DriverProcess, workdir: str
) -> None:
    driver_process.start()
    churn = Churn(driver_process, workdir)
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(churn.client_loop, range(CLIENTS)))
    duration = time.monotonic() - started
    assert driver_process.alive(), driver_process.log()

    leaks = disagreements(workdir, driver_process.pool, expect_empty=True)
    leftover_dirs = [os.path.join(workdir, c, d) for c in os.listdir(workdir)
                     if c.startswith("c") and os.path.isdir(os.path.join(workdir, c))
                     for d in os.listdir(os.path.join(workdir, c))]
    leaks += [f"directory left: {d}" for d in leftover_dirs]
    driver_process.stop()
    leaks += [f"loop {d}" for d in loops_under(workdir)] + \
        [f"mount {m}" for m in mounts_under(workdir)]
    print(f"\nchurn: lifecycles={churn.done} of {LIFECYCLES} (clients={CLIENTS},"
          f" ext4 every {EXT4_EVERY}th) errors={len(churn.errors)} leaks={len(leaks)}"
          f" aborted_retries={churn.aborted_retries} duration={duration:.1f}s"
          f" rate={churn.done / duration:.1f}/s slowest={churn.slowest:.2f}s")
    assert churn.errors == [], churn.errors[:10]
    assert leaks == [], leaks[:10]
    assert churn.done == LIFECYCLES

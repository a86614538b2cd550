"""Concurrent calls, as several sidecars and kubelet make them.

- 64 parallel CreateVolume calls with one name make exactly one volume: one file, one
  catalog row; every caller gets that volume or ABORTED, and a retry returns the same id.
  The same for CreateSnapshot.
- Parallel calls on one volume are serialized or ABORTED, never interleaved: every
  kernel-changing step the driver takes (attach, detach, mount, unmount, mkfs, grow,
  freeze, ...) is recorded, and no two ever overlap on the volume.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.snapshot_ids import file_key
from csi_py.linux import copies, files
from tests.conftest import needs_root
from tests.lifecycle import MiB, Volumes, create_request
from tests.reliability.harness import catalog_rows, disagreements, payload, read_digest, write_data

pytestmark = [pytest.mark.integration, needs_root()]

CALLERS = 64
OK = grpc.StatusCode.OK
ABORTED = grpc.StatusCode.ABORTED


def all_at_once(n: int, call):  # type: ignore[no-untyped-def]
    """Run `call(i)` in n threads released together; returns (code, result) per call."""
    barrier = threading.Barrier(n)

    def one(i: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        try:
            return OK, call(i)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("kind", ["block", "ext4"])
def test_64_parallel_creates_with_one_name_make_exactly_one_volume(driver, kind):
    request = create_request("same-name", kind, 32 * MiB)
    results = all_at_once(
        CALLERS, lambda i: driver.client.controller.CreateVolume(request, timeout=120).volume)
    codes = {code for code, _ in results}
    assert codes <= {OK, ABORTED}, [r for r in results if r[0] not in (OK, ABORTED)]
    ids = {vol.volume_id for code, vol in results if code is OK}
    assert len(ids) == 1, ids
    (vid,) = ids
    # The retry every ABORTED caller makes gets the same volume.
    assert driver.client.controller.CreateVolume(request, timeout=60).volume.volume_id == vid
    assert os.listdir(os.path.join(driver.pool, "volumes")) == [vid + ".img"]
    assert [row[0] for row in catalog_rows(driver.pool)["volumes"]] == [vid]
    print(f"{CALLERS} parallel CreateVolume: {sum(c is OK for c, _ in results)} OK,"
          f" {sum(c is ABORTED for c, _ in results)} ABORTED, one volume")
    Volumes(driver.client).delete(vid)


def test_64_parallel_snapshots_with_one_name_make_exactly_one_snapshot(driver):
    v = Volumes(driver.client)
    vid = v.create("snap-source", "block").volume_id
    request = pb.CreateSnapshotRequest(source_volume_id=vid, name="same-snapshot")
    results = all_at_once(
        CALLERS, lambda i: driver.client.controller.CreateSnapshot(request, timeout=120).snapshot)
    assert {code for code, _ in results} <= {OK, ABORTED}, results
    ids = {snap.snapshot_id for code, snap in results if code is OK}
    assert len(ids) == 1, ids
    (sid,) = ids
    assert v.snapshot(vid, "same-snapshot").snapshot_id == sid
    assert os.listdir(os.path.join(driver.pool, "snapshots")) == [file_key(sid) + ".img"]
    assert [row[0] for row in catalog_rows(driver.pool)["snapshots"]] == [sid]
    v.delete_snapshot(sid)
    v.delete(vid)


class Recorder:
    """Wraps the driver's kernel-changing operations; counts how many run at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.calls = 0
        self.overlaps: list[str] = []
        self.restore: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
            with self.lock:
                self.inside += 1
                self.calls += 1
                self.max_inside = max(self.max_inside, self.inside)
                if self.inside > 1:
                    self.overlaps.append(f"{name}{args[:1]}")
            try:
                time.sleep(self.delay)  # widen the window an interleaving would need
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.inside -= 1

        self.restore.append((owner, name, original))
        setattr(owner, name, recorded)

    def undo(self) -> None:
        for owner, name, original in reversed(self.restore):
            setattr(owner, name, original)


MUTATING = {
    "loops": ("attach", "detach", "refresh_capacity", "flush", "set_read_ahead",
              "set_direct_io"),
    "mounts": ("mount", "bind_mount", "unmount"),
    "fs": ("format", "grow", "freeze", "thaw"),
}
# What each call may answer when others race it on the same volume: OK, ABORTED (busy),
# or the spec's code for the state another call left (e.g. unstage while published).
ALLOWED = {
    "stage": {OK, ABORTED},
    "unstage": {OK, ABORTED, grpc.StatusCode.FAILED_PRECONDITION},
    "publish": {OK, ABORTED, grpc.StatusCode.FAILED_PRECONDITION},
    "unpublish": {OK, ABORTED},
    "expand": {OK, ABORTED},
    "node_expand": {OK, ABORTED, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION},
    "snapshot": {OK, ABORTED},
    "attach": {OK, ABORTED},
}


def test_the_recorder_sees_an_interleaving():
    """The check below would notice: two threads in one recorded operation overlap."""

    class Ops:
        def step(self) -> None:
            pass

    ops, recorder = Ops(), Recorder(delay=0.05)
    recorder.wrap(ops, "step")
    all_at_once(2, lambda i: ops.step())
    assert recorder.max_inside == 2 and recorder.overlaps


def test_parallel_calls_on_one_volume_are_serialized_or_aborted(driver):
    v = Volumes(driver.client)
    kind = "ext4"
    vid = v.create("contended", kind, 32 * MiB).volume_id
    staging = driver.path("stage")
    targets = [driver.path(f"t{i}") for i in range(3)]
    v.bring_up(vid, kind, staging, targets[0])
    digest = write_data(targets[0], kind, payload("contended"))
    v.unpublish(vid, targets[0])

    host = driver.server.driver.host
    recorder = Recorder(delay=0.002)
    for attr, names in MUTATING.items():
        for name in names:
            recorder.wrap(getattr(host, attr), name)
    for name in ("grow_image", "create_image", "remove_file"):
        recorder.wrap(files, name)
    recorder.wrap(copies, "clone_file")
    sizes = iter(range(33, 10_000))
    snapshots: list[str] = []
    outcomes: dict[str, dict[grpc.StatusCode, int]] = {k: {} for k in ALLOWED}
    unexpected: list[str] = []
    tally = threading.Lock()
    stop = time.monotonic() + 6.0

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            op = rnd.choice(list(ALLOWED))
            target = rnd.choice(targets)
            try:
                if op == "stage":
                    v.stage(vid, kind, staging)
                elif op == "unstage":
                    v.unstage(vid, staging)
                elif op == "publish":
                    v.publish(vid, kind, staging, target)
                elif op == "unpublish":
                    v.unpublish(vid, target)
                elif op == "expand":
                    v.expand(vid, kind, next(sizes) * MiB // 8 * 8)
                elif op == "node_expand":
                    v.node_expand(vid, kind, target, staging, 0)
                elif op == "snapshot":
                    snapshots.append(v.snapshot(vid, f"s-{seed}-{rnd.random()}").snapshot_id)
                elif op == "attach":
                    v.attach(vid, kind)
                code = OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in ALLOWED[op]:
                    unexpected.append(f"{op}: {code.name}: {exc.details()}")
                if code is ABORTED:
                    time.sleep(rnd.uniform(0.001, 0.004))  # the sidecars back off too
            with tally:
                outcomes[op][code] = outcomes[op].get(code, 0) + 1

    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(worker, range(12)))
    finally:
        recorder.undo()
    print({op: {c.name: n for c, n in codes.items()} for op, codes in outcomes.items()})
    assert unexpected == []
    assert recorder.overlaps == [], recorder.overlaps[:10]
    assert recorder.max_inside == 1 and recorder.calls > 50
    total = {c: sum(o.get(c, 0) for o in outcomes.values()) for c in (OK, ABORTED)}
    assert total[OK] > 20 and total[ABORTED] > 20, total  # there was real contention

    # The volume is intact and consistent: stage, publish, read the data, take it down.
    v.stage(vid, kind, staging)
    v.publish(vid, kind, staging, targets[0])
    assert read_digest(targets[0], kind, MiB) == digest
    assert disagreements(driver.workdir, driver.pool) == []
    for target in targets:
        v.unpublish(vid, target)
    v.unstage(vid, staging)
    v.detach(vid)
    for sid in snapshots:
        v.delete_snapshot(sid)
    v.delete(vid)
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []

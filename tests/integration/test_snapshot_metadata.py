"""Changed-block tracking for real (the CSI SnapshotMetadata service): snapshots of real
volumes on a real reflink pool (a loop-mounted xfs with reflink=1 made here) and on the
default pool (no reflink: snapshots are sparse copies, and deltas fall back to comparing
allocated blocks). GetMetadataDelta must return exactly the ranges a byte comparison of
the two snapshot images finds, GetMetadataAllocated exactly what SEEK_DATA finds, and
both must honour starting_offset and max_results and the spec's error table."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.domain.snapshot_ids import file_key
from csi_py.rpc.client import mount_capability
from tests.conformance.helpers import (
    MiB,
    create,
    expect_error,
    node_session,
    snapshot,
    unknown_snapshot_id,
)
from tests.conftest import RunningDriver
from tests.lifecycle import BLOCK, GiB
from tests.pools import driver_on_own_pool

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
BLK = 4096


@pytest.fixture(params=["xfs", "btrfs"])
def reflink_driver(workdir: str, request) -> Iterator[RunningDriver]:
    """A driver on its own 2 GiB reflink pool: xfs with reflink=1, or btrfs."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and /dev/loop-control (real loop devices and mounts)")
    with driver_on_own_pool(workdir, request.param, 2 * GiB,
                            options={"reserve_bytes": 16 * MiB}) as running:
        yield running


def stub(driver) -> csi_pb2_grpc.SnapshotMetadataStub:
    return csi_pb2_grpc.SnapshotMetadataStub(driver.client.channel)


def collect(responses, max_results: int = 0) -> tuple[list[tuple[int, int]], int]:
    """All ranges of a stream (checking the spec's per-stream rules) and the capacity."""
    ranges: list[tuple[int, int]] = []
    capacities = set()
    for rsp in responses:
        assert rsp.block_metadata_type == pb.VARIABLE_LENGTH
        capacities.add(rsp.volume_capacity_bytes)
        if max_results:
            assert len(rsp.block_metadata) <= max_results
        for b in rsp.block_metadata:
            assert b.size_bytes > 0
            if ranges:
                assert ranges[-1][0] + ranges[-1][1] <= b.byte_offset, "overlap or disorder"
            ranges.append((b.byte_offset, b.size_bytes))
    assert len(capacities) <= 1, capacities
    return ranges, capacities.pop() if capacities else 0


def merged(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= off:
            out[-1] = (out[-1][0], max(out[-1][0] + out[-1][1], off + n) - out[-1][0])
        else:
            out.append((off, n))
    return out


def seek_data(path: str) -> list[tuple[int, int]]:
    """The allocated ranges of a file, straight from lseek (the test's own walk)."""
    found = []
    with open(path, "rb") as fh:
        fd, size, pos = fh.fileno(), os.fstat(fh.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, end - start))
            pos = end
    return merged(found)


def byte_diff(a: str, b: str) -> list[tuple[int, int]]:
    """The 4 KiB blocks whose bytes differ between two images, by reading them: every
    region allocated in either file (a hole reads as zeros, so two holes are equal)."""
    changed = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off, n in merged(seek_data(a) + seek_data(b)):
            start, end = off - off % BLK, off + n
            pos = start
            while pos < end:
                count = min(4 * MiB, end - pos)
                da, db = os.pread(fa.fileno(), count, pos), os.pread(fb.fileno(), count, pos)
                da, db = da.ljust(count, b"\0"), db.ljust(count, b"\0")
                if da != db:
                    changed += [(pos + i, BLK) for i in range(0, count, BLK)
                                if da[i:i + BLK] != db[i:i + BLK]]
                pos += count
    return merged(changed)


def snap_image(driver, snapshot_id: str) -> str:
    return os.path.join(driver.pool, "snapshots", file_key(snapshot_id) + ".img")


def write(path: str, chunks: list[int], size: int, seed: int) -> None:
    """Random bytes at each offset in `chunks` (each `size` long), synced."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in chunks:
            os.pwrite(fd, rng.randbytes(size), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def delta(driver, base: str, target: str, start: int = 0, max_results: int = 0):
    return collect(stub(driver).GetMetadataDelta(pb.GetMetadataDeltaRequest(
        base_snapshot_id=base, target_snapshot_id=target, starting_offset=start,
        max_results=max_results), timeout=300), max_results)


def allocated(driver, snapshot_id: str, start: int = 0, max_results: int = 0):
    return collect(stub(driver).GetMetadataAllocated(pb.GetMetadataAllocatedRequest(
        snapshot_id=snapshot_id, starting_offset=start, max_results=max_results),
        timeout=300), max_results)


def two_snapshots_of_a_block_volume(driver, size: int, first: list[int], second: list[int],
                                    chunk: int) -> tuple[str, str]:
    """A block volume written at `first`, snapshot, written at `second`, snapshot; the
    writes go through its published loop device."""
    vol = create(driver, "cbt", size=size, caps=[BLOCK])
    with node_session(driver) as node:
        staging, target = driver.path("st"), driver.path("tgt")
        node.stage(vol.volume_id, staging, BLOCK)
        node.publish(vol.volume_id, staging, target, BLOCK)
        write(target, first, chunk, seed=1)
        base = snapshot(driver, vol.volume_id, "cbt-base").snapshot_id
        write(target, second, chunk, seed=2)
        top = snapshot(driver, vol.volume_id, "cbt-top").snapshot_id
    return base, top


def test_delta_of_a_10_gib_volume_with_100_mib_changed_on_a_reflink_pool(reflink_driver):
    """200 MiB written, snapshot; then 100 MiB changed (half of it over the old data,
    half in fresh places), snapshot: the delta from the extent maps is exactly what a
    byte comparison finds, and allocated ranges are exactly what SEEK_DATA finds."""
    driver = reflink_driver
    chunk = MiB
    slots = random.Random(7).sample(range(10 * 1024), 250)
    first, fresh = sorted(slots[:200]), sorted(slots[200:])
    overwritten = sorted(random.Random(8).sample(first, 50))
    base, top = two_snapshots_of_a_block_volume(
        driver, 10 * GiB, [s * chunk for s in first],
        sorted(s * chunk for s in overwritten + fresh), chunk)
    got, capacity = delta(driver, base, top)
    assert capacity == 10 * GiB
    expected = byte_diff(snap_image(driver, base), snap_image(driver, top))
    assert sum(n for _, n in expected) == 100 * MiB
    assert merged(got) == expected
    assert got == merged(got), "adjacent ranges come merged"
    alloc, capacity = allocated(driver, top)
    assert capacity == 10 * GiB
    assert merged(alloc) == seek_data(snap_image(driver, top))
    assert sum(n for _, n in merged(alloc)) == 250 * MiB


def test_starting_offset_and_max_results(reflink_driver):
    driver = reflink_driver
    base, top = two_snapshots_of_a_block_volume(
        driver, GiB, [i * MiB for i in range(0, 40, 2)], [i * MiB for i in range(10, 60, 4)],
        MiB)
    whole, _ = delta(driver, base, top)
    assert len(whole) > 5
    paged, _ = delta(driver, base, top, max_results=2)
    assert paged == whole
    # Resume in the middle of a range: nothing ends before the offset, the rest is equal.
    off, n = whole[2]
    mid = off + n // 2
    resumed, _ = delta(driver, base, top, start=mid, max_results=3)
    assert resumed[0][0] + resumed[0][1] > mid
    assert merged([(max(o, mid), o + n - max(o, mid)) for o, n in whole
                   if o + n > mid]) == merged(resumed)
    full, _ = allocated(driver, top)
    later, _ = allocated(driver, top, start=full[1][0], max_results=1)
    assert later == full[1:]
    assert allocated(driver, top, start=GiB)[0] == []  # the very end: nothing left


def test_delta_of_a_filesystem_volume(reflink_driver):
    """An xfs volume: files written, snapshot, some rewritten and new ones added,
    snapshot. The delta covers every block a byte comparison finds changed (filesystem
    metadata included); it may also hold blocks the filesystem rewrote with the same
    bytes (their extents moved), which changed-block tracking rightly reports as
    written, but no more than a little metadata's worth."""
    driver = reflink_driver
    cap = mount_capability("xfs")
    vol = create(driver, "cbt-fs", size=512 * MiB, caps=[cap])
    with node_session(driver) as node:
        staging, target = driver.path("st"), driver.path("tgt")
        node.stage(vol.volume_id, staging, cap)
        node.publish(vol.volume_id, staging, target, cap)
        for i in range(8):
            with open(os.path.join(target, f"f{i}"), "wb") as fh:
                fh.write(random.Random(i).randbytes(2 * MiB))
        os.sync()
        base = snapshot(driver, vol.volume_id, "cbt-fs-base").snapshot_id
        for i in (1, 5, 9):
            with open(os.path.join(target, f"f{i}"), "r+b" if i < 8 else "wb") as fh:
                fh.write(random.Random(100 + i).randbytes(MiB))
        os.sync()
        top = snapshot(driver, vol.volume_id, "cbt-fs-top").snapshot_id
    got, capacity = delta(driver, base, top)
    assert capacity == vol.capacity_bytes
    expected = byte_diff(snap_image(driver, base), snap_image(driver, top))
    assert sum(n for _, n in expected) >= 3 * MiB
    assert merged(got + expected) == merged(got), "a changed block is missing"
    extra = sum(n for _, n in merged(got)) - sum(n for _, n in expected)
    assert 0 <= extra <= MiB, f"{extra} bytes reported changed that are not"


def test_delta_without_reflink_compares_allocated_blocks(driver):
    """The default test pool has no reflink: snapshots are sparse copies whose extents
    never match, so the delta compares allocated blocks; still exact."""
    base, top = two_snapshots_of_a_block_volume(
        driver, 256 * MiB, [i * MiB for i in range(0, 64, 3)],
        [i * MiB + 8192 for i in range(0, 64, 5)], 64 * 1024)
    got, _ = delta(driver, base, top)
    expected = byte_diff(snap_image(driver, base), snap_image(driver, top))
    assert expected and merged(got) == expected


def test_error_table(driver):
    vol = create(driver, "cbt-err", size=64 * MiB)
    other = create(driver, "cbt-other", size=64 * MiB)
    a = snapshot(driver, vol.volume_id, "cbt-a").snapshot_id
    b = snapshot(driver, vol.volume_id, "cbt-b").snapshot_id
    elsewhere = snapshot(driver, other.volume_id, "cbt-x").snapshot_id
    s = stub(driver)

    def alloc(**kw):
        return list(s.GetMetadataAllocated(pb.GetMetadataAllocatedRequest(**kw), timeout=30))

    def dlt(**kw):
        return list(s.GetMetadataDelta(pb.GetMetadataDeltaRequest(**kw), timeout=30))

    def call(fn):
        return lambda request, timeout: fn(**request)

    expect_error(call(alloc), {}, Code.INVALID_ARGUMENT, "snapshot_id")
    expect_error(call(alloc), {"snapshot_id": unknown_snapshot_id()}, Code.NOT_FOUND,
                 unknown_snapshot_id())
    expect_error(call(alloc), {"snapshot_id": a, "starting_offset": -1}, Code.OUT_OF_RANGE,
                 "starting_offset")
    expect_error(call(alloc), {"snapshot_id": a, "starting_offset": 64 * MiB + 1},
                 Code.OUT_OF_RANGE, str(64 * MiB))
    expect_error(call(alloc), {"snapshot_id": a, "max_results": -1}, Code.INVALID_ARGUMENT,
                 "max_results")
    expect_error(call(dlt), {"target_snapshot_id": b}, Code.INVALID_ARGUMENT,
                 "base_snapshot_id")
    expect_error(call(dlt), {"base_snapshot_id": a, "target_snapshot_id": "snap-nope"},
                 Code.NOT_FOUND, "snap-nope")
    expect_error(call(dlt), {"base_snapshot_id": a, "target_snapshot_id": elsewhere},
                 Code.INVALID_ARGUMENT, "same volume")
    # A snapshot of another node (its id names the node): NOT_FOUND saying which node.
    on_b = file_key(a) + ".node-b"
    expect_error(call(alloc), {"snapshot_id": on_b}, Code.NOT_FOUND, on_b, "node 'node-b'")
    expect_error(call(dlt), {"base_snapshot_id": a, "target_snapshot_id": on_b},
                 Code.NOT_FOUND, "target_snapshot_id", "node 'node-b'")
    expect_error(call(dlt), {"base_snapshot_id": b, "target_snapshot_id": a},
                 Code.INVALID_ARGUMENT, "before")
    assert dlt(base_snapshot_id=a, target_snapshot_id=b) == []  # nothing changed
    os.remove(snap_image(driver, b))
    expect_error(call(dlt), {"base_snapshot_id": a, "target_snapshot_id": b},
                 Code.FAILED_PRECONDITION, "missing")


def test_the_service_is_advertised(driver):
    rsp = driver.client.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(),
                                                       timeout=10)
    services = {c.service.type for c in rsp.capabilities if c.HasField("service")}
    assert pb.PluginCapability.Service.SNAPSHOT_METADATA_SERVICE in services

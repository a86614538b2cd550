"""A full pool: the driver on a small filesystem of its own.

The pool directory is a 320 MiB ext4 (a sparse file in the test's directory on a loop
device, mounted at the pool path before the driver starts):

- a thick CreateVolume larger than the free space is RESOURCE_EXHAUSTED and leaves no
  file, also when the space runs out half way through allocating it;
- thick volumes keep their guaranteed space: writes to a thick volume succeed after
  thin volumes filled the pool;
- a thin volume is reported abnormal (ControllerGetVolumeHealth) before a
  write to it fails;
- expansion, snapshots, group snapshots, restores and clones that do not fit fail with
  RESOURCE_EXHAUSTED and leave nothing behind (no file, no catalog row, old size kept).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.snapshot_ids import file_key
from csi_py.linux import real_host
from tests.conftest import needs_root
from tests.kernel_leaks import loops_under, mounts_under
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import catalog_rows, disagreements, payload, read_digest, write_data

pytestmark = [pytest.mark.integration, needs_root()]

POOL_FS = 320 * MiB
RESERVE = 16 * MiB
CHUNK = 4 * MiB
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def small_pool(workdir: str):
    """A small ext4 mounted at the pool path the `driver` fixture will use."""
    host = real_host()
    image = os.path.join(workdir, "poolfs.img")
    with open(image, "wb") as fh:
        fh.truncate(POOL_FS)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], check=True,
                   capture_output=True, env={"LC_ALL": "C", "PATH": os.environ["PATH"]})
    device = host.loops.attach(image, direct_io=False)
    pool = os.path.join(workdir, "pool")
    os.mkdir(pool, 0o700)
    try:
        host.mounts.mount(device.path, pool, "ext4")
        os.chmod(pool, 0o700)
    except BaseException:
        host.loops.detach(device.path)
        raise
    yield pool
    # The driver has stopped by now. Whatever it left on the pool must go first (the
    # pool cannot be unmounted under a loop device): count it, clean it, then fail.
    left = [m for m in mounts_under(workdir) if m != pool] + loops_under(pool)
    for point in reversed([m for m in mounts_under(workdir) if m != pool]):
        host.mounts.unmount(point)
    for dev in loops_under(pool):
        host.loops.detach(dev)
    host.mounts.unmount(pool)
    host.loops.detach(device.path)
    if left:
        pytest.fail(f"the test left these on the small pool: {left}")


@pytest.fixture
def driver_options(small_pool: str) -> dict:
    return {"reserve_bytes": RESERVE}


def free_bytes(driver) -> int:
    st = os.statvfs(os.path.join(driver.pool, "volumes"))
    return st.f_bavail * st.f_frsize


def thick(**extra) -> dict[str, str]:
    return {"provisioning": "thick", **extra}


def expect_exhausted(call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    assert err.value.code() == EXHAUSTED, f"{err.value.code().name}: {err.value.details()}"
    return err.value.details() or ""


def assert_nothing_left(driver, volumes: set[str], snapshots: set[str] = frozenset()) -> None:
    rows = catalog_rows(driver.pool)
    assert {r[0] for r in rows["volumes"]} == volumes
    assert {r[0] for r in rows["snapshots"]} == set(snapshots)
    assert rows["groups"] == []
    assert set(os.listdir(os.path.join(driver.pool, "volumes"))) == {v + ".img" for v in volumes}
    assert set(os.listdir(os.path.join(driver.pool, "snapshots"))) == \
        {file_key(s) + ".img" for s in snapshots}
    assert disagreements(driver.workdir, driver.pool) == []


def test_the_pool_is_the_small_filesystem(driver):
    st = os.statvfs(driver.pool)
    assert st.f_blocks * st.f_frsize < POOL_FS


def test_thick_create_larger_than_free_space_is_resource_exhausted(driver, monkeypatch):
    v = Volumes(driver.client)
    too_big = (free_bytes(driver) // MiB + 64) * MiB
    message = expect_exhausted(v.create, "too-big", "block", too_big, params=thick())
    assert "too-big" in message and driver.pool in message
    assert_nothing_left(driver, set())

    # GetCapacity is honest: exactly what it offers can be created thick...
    offered = driver.client.controller.GetCapacity(
        pb.GetCapacityRequest(parameters=thick()), timeout=60).available_capacity
    vid = v.create("all-of-it", "block", offered, params=thick()).volume_id
    # ...and then nothing more.
    expect_exhausted(v.create, "one-more", "block", 8 * MiB, params=thick())
    assert_nothing_left(driver, {vid})
    v.delete(vid)

    # The space check passes but the disk fills while allocating (another writer won the
    # race): the half-allocated file is removed, and the answer is the same.
    monkeypatch.setattr(driver.server.driver.controller.space, "check_fits", lambda *a: None)
    expect_exhausted(v.create, "raced", "block", too_big, params=thick())
    assert_nothing_left(driver, set())


def test_thick_volume_keeps_its_space_and_thin_is_reported_before_it_fails(driver, caplog):
    v = Volumes(driver.client)
    thick_size = 64 * MiB
    thick_id = v.create("guaranteed", "block", thick_size, params=thick()).volume_id
    thin_id = v.create("greedy", "block", POOL_FS, params={"provisioning": "thin"}).volume_id
    published = []
    try:
        for vid, name in ((thick_id, "thick"), (thin_id, "thin")):
            os.mkdir(driver.path(f"stage-{name}"))
            v.attach(vid, "block")
            v.stage(vid, "block", driver.path(f"stage-{name}"))
            v.publish(vid, "block", driver.path(f"stage-{name}"), driver.path(name))
            published.append((vid, name))
        assert not v.condition(thin_id).abnormal

        # Fill the pool through the thin volume until a write fails; watch its condition.
        abnormal_at = failed_at = None
        fd = os.open(driver.path("thin"), os.O_WRONLY)
        try:
            chunk = payload("fill", CHUNK)
            for i in range(POOL_FS // CHUNK):
                condition = v.condition(thin_id)
                if condition.abnormal and abnormal_at is None:
                    abnormal_at = i
                    assert "thin" in condition.message and thin_id in condition.message
                try:
                    os.pwrite(fd, chunk, i * CHUNK)
                    os.fsync(fd)
                except OSError as exc:
                    assert exc.errno in (errno.EIO, errno.ENOSPC), exc
                    failed_at = i
                    break
        finally:
            os.close(fd)
        assert failed_at is not None, "the thin volume never filled the pool"
        assert abnormal_at is not None and abnormal_at < failed_at, (
            f"the thin volume was reported abnormal at chunk {abnormal_at}, its first write"
            f" failed at chunk {failed_at}")
        assert free_bytes(driver) < CHUNK
        print(f"thin volume reported abnormal at chunk {abnormal_at}, first failed write"
              f" at chunk {failed_at} ({CHUNK // MiB} MiB chunks)")

        # The thick volume still takes every one of its bytes.
        data = payload("thick", thick_size)
        digest = write_data(driver.path("thick"), "block", data)
        assert read_digest(driver.path("thick"), "block", thick_size) == digest
        assert not v.condition(thick_id).abnormal
    finally:
        for vid, name in reversed(published):
            v.unpublish(vid, driver.path(name))
            v.unstage(vid, driver.path(f"stage-{name}"))
            v.detach(vid)
        v.delete(thin_id)
        v.delete(thick_id)
    assert_nothing_left(driver, set())
    # The full pool could not take even the catalog's writes for unstage and delete:
    # the catalog's reserve was given up for them, and made again as soon as the
    # deletes gave the pool room (not only at the next start).
    reserve = os.path.join(driver.pool, "catalog.reserve")
    assert os.path.getsize(reserve) > 0
    assert "released the catalog's reserve" in caplog.text
    driver.restart()
    assert os.path.getsize(reserve) > 0


def test_expansion_snapshots_restores_and_clones_that_do_not_fit(driver, monkeypatch):
    v = Volumes(driver.client)
    core = driver.server.driver
    size = 64 * MiB
    vid = v.create("source", "block", size, params=thick()).volume_id
    image = os.path.join(driver.pool, "volumes", vid + ".img")
    staging, target = driver.path("stage"), driver.path("t")
    os.mkdir(staging)
    v.bring_up(vid, "block", staging, target)
    digest = write_data(target, "block", payload("source", size))
    # Leave 32 MiB free (plus the reserve): less than the source's 64 MiB of data.
    filler_size = (free_bytes(driver) - RESERVE - 32 * MiB) // MiB * MiB
    filler = v.create("filler", "block", filler_size, params=thick()).volume_id
    volumes = {vid, filler}
    try:
        # Expansion: the space check, and ENOSPC half way through allocating.
        expect_exhausted(v.expand, vid, "block", size + 128 * MiB)
        monkeypatch.setattr(core.controller.space, "check_growth_fits", lambda *a: None)
        expect_exhausted(v.expand, vid, "block", size + 128 * MiB)
        monkeypatch.undo()
        assert os.path.getsize(image) == size
        got = driver.client.controller.ControllerGetVolume(
            pb.ControllerGetVolumeRequest(volume_id=vid), timeout=60).volume
        assert got.capacity_bytes == size
        # A thin volume cannot promise more than the overcommit allows either.
        thin = v.create("thin", "block", 16 * MiB).volume_id
        volumes.add(thin)
        expect_exhausted(v.expand, thin, "block", 64 << 30)
        assert os.path.getsize(os.path.join(driver.pool, "volumes", thin + ".img")) == 16 * MiB

        # Snapshots: the space check, and ENOSPC half way through the copy.
        expect_exhausted(v.snapshot, vid, "snap")
        monkeypatch.setattr(core.controller.space, "check_copy_room", lambda *a: None)
        expect_exhausted(v.snapshot, vid, "snap-raced")
        expect_exhausted(v.group_snapshot, "group-raced", [vid, thin])
        monkeypatch.undo()
        expect_exhausted(v.group_snapshot, "group", [vid, thin])
        assert_nothing_left(driver, volumes)

        # Restores and clones of a thick volume need its size in free space.
        expect_exhausted(v.create, "clone", "block", size, volume_id=vid, params=thick())
        monkeypatch.setattr(core.controller.space, "check_fits", lambda *a: None)
        expect_exhausted(v.create, "clone-raced", "block", size, volume_id=vid,
                         params=thick())
        monkeypatch.undo()
        assert_nothing_left(driver, volumes)

        # Free the filler: a snapshot and a restore now fit, and the data is intact.
        v.delete(filler)
        volumes.discard(filler)
        snap = v.snapshot(vid, "snap")
        restored = v.create("restored", "block", size, snapshot_id=snap.snapshot_id).volume_id
        volumes.add(restored)
        assert read_digest(target, "block", size) == digest
        v.delete_snapshot(snap.snapshot_id)
    finally:
        monkeypatch.undo()
        v.take_down(vid, staging, target)
        for other in volumes:
            v.delete(other)
    assert_nothing_left(driver, set())


# EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); NOLOGFLUSH: stop at once, as a failing
# disk would, without writing the journal out.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def fill_to_the_last_block(pool: str) -> str:
    """Fill the pool's filesystem completely with a file of the test's own (in the
    pool filesystem's root, beside the driver's directories)."""
    filler = os.path.join(pool, "filler")
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        st = os.statvfs(pool)
        try:
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        offset = os.fstat(fd).st_size
        block = b"\xff" * 4096
        while True:
            try:
                os.pwrite(fd, block, offset)
                os.fsync(fd)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
            offset += len(block)
    finally:
        os.close(fd)
    assert os.statvfs(pool).f_bavail == 0
    return filler


def capacity(driver, provisioning: str) -> int:
    return driver.client.controller.GetCapacity(pb.GetCapacityRequest(
        parameters={"provisioning": provisioning}), timeout=60).available_capacity


def bring_up(driver, kinds: list[str]) -> list[tuple[str, str, str, str]]:
    v = Volumes(driver.client)
    up = []
    for kind in kinds:
        vid = v.create(f"full-{kind}", kind, 32 * MiB).volume_id
        staging, target = driver.path(f"s-{kind}"), driver.path(f"t-{kind}")
        os.mkdir(staging)
        v.bring_up(vid, kind, staging, target)
        write_data(target, kind, payload(kind))
        up.append((vid, kind, staging, target))
    return up


def test_teardown_and_restart_on_a_pool_filled_to_the_last_block(driver, caplog):
    up = bring_up(driver, ["ext4", "block"])
    filler = fill_to_the_last_block(driver.pool)
    # A full pool offers nothing, thin or thick; health says why.
    assert capacity(driver, "thin") == capacity(driver, "thick") == 0
    v = Volumes(driver.client)
    condition = v.condition(up[0][0])
    assert condition.abnormal and "thin" in condition.message, condition.message
    driver.restart()  # start-up works on a full pool
    assert os.statvfs(driver.pool).f_bavail == 0
    v = Volumes(driver.client)
    for vid, _, staging, target in up:
        v.take_down(vid, staging, target)
    assert loops_under(driver.pool) == []
    for vid, *_ in up:
        v.delete(vid)
    assert "released the catalog's reserve" in caplog.text
    assert_nothing_left(driver, set())
    os.unlink(filler)
    # The reserve is back as soon as the pool has room: no restart needed.
    assert capacity(driver, "thin") > 0
    assert os.path.getsize(os.path.join(driver.pool, "catalog.reserve")) > 0


def test_teardown_on_a_pool_whose_filesystem_shut_down(driver):
    up = bring_up(driver, ["ext4", "block"])
    fd = os.open(driver.pool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)
    v = Volumes(driver.client)
    # Health says why (through the node's health RPC; the controller's answer may need a
    # catalog read the failed pool cannot serve, and then says that instead).
    for vid, kind, _, target in up:
        health = driver.client.node.NodeGetVolumeHealth(pb.NodeGetVolumeHealthRequest(
            volume_id=vid, volume_publish_path=target), timeout=60).volume_health
        found = {(h.status, h.reason): h.message for h in health.health_statuses}
        message = found.get((pb.VolumeHealthErrorType.INACCESSIBLE, "PoolFailed"), "")
        assert "has failed" in message, (kind, found)
    assert capacity(driver, "thin") == capacity(driver, "thick") == 0
    # kubelet can still release the pods.
    for vid, _, staging, target in up:
        v.unpublish(vid, target)
        v.unstage(vid, staging)
    assert loops_under(driver.pool) == []
    assert [m for m in mounts_under(driver.workdir) if m != driver.pool] == []
    # What needs the pool's filesystem answers a clear, retryable error that says why:
    # forgetting the attachment, deleting, creating.
    for call in [lambda: v.detach(up[0][0]), lambda: v.delete(up[0][0]),
                 lambda: v.create("after-failure", "block", 16 * MiB)]:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "has failed" in (err.value.details() or ""), err.value.details()

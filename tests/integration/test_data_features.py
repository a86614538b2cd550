"""Snapshots, restores, clones, expansion and group snapshots with real data, through
gRPC against a real driver: real loop devices, real filesystems, real mounts, sha256
checksums of what was written, statvfs of what the filesystem offers, and fsck of what
a snapshot captured while a writer was busy.

Every volume is staged through a NodeSession, which unpublishes and unstages in a
finally; writers are stopped before that. The `workdir` fixture fails any test that
leaves a loop device or mount behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import block_capability, mount_capability
from tests.conformance.helpers import (
    NodeSession,
    expect_error,
    group_stub,
    node_session,
    restore_request,
    snapshot,
)
from tests.conftest import has_cap_sys_resource
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration

SIZES = {"ext4": 32 * MiB, "xfs": 300 * MiB, "btrfs": 128 * MiB, "block": 32 * MiB}
# btrfs grows to 256 MiB at least: the kernel refuses smaller resizes.
GROWTH = {"ext4": 32 * MiB, "xfs": 100 * MiB, "btrfs": 128 * MiB, "block": 16 * MiB}
RECORD = 4096
Code = grpc.StatusCode


def _cap(kind: str) -> pb.VolumeCapability:
    return block_capability() if kind == "block" else mount_capability(kind)


NO_CAP_SYS_RESOURCE = (
    "this VM's root lacks CAP_SYS_RESOURCE (capability bounding set bit 24), which ext4"
    " online resize (EXT4_IOC_RESIZE_FS) needs"
)


# --- small helpers --------------------------------------------------------------------------


def create(driver, name: str, kind: str, size: int = 0) -> pb.Volume:
    return driver.client.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=name, capacity_range=pb.CapacityRange(required_bytes=size or SIZES[kind]),
            volume_capabilities=[_cap(kind)]),
        timeout=60).volume


def restore(driver, name: str, kind: str, snapshot_id: str = "", volume_id: str = "",
            size: int = 0) -> pb.Volume:
    return driver.client.controller.CreateVolume(
        restore_request(name, snapshot_id=snapshot_id, volume_id=volume_id,
                        size=size or SIZES[kind], caps=[_cap(kind)]),
        timeout=120).volume


def expand(driver, volume_id: str, kind: str, size: int) -> pb.ControllerExpandVolumeResponse:
    return driver.client.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(volume_id=volume_id,
                                         capacity_range=pb.CapacityRange(required_bytes=size),
                                         volume_capability=_cap(kind)),
        timeout=60)


def node_expand(driver, volume_id: str, path: str, staging: str, kind: str,
                size: int) -> pb.NodeExpandVolumeResponse:
    return driver.client.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=path,
                                   staging_target_path=staging, volume_capability=_cap(kind),
                                   capacity_range=pb.CapacityRange(required_bytes=size)),
        timeout=120)


def mount(node: NodeSession, volume_id: str, kind: str, name: str) -> str:
    """Stage and publish; returns the target path (a directory, or a device file)."""
    staging = node.driver.path(f"st-{name}")
    target = node.driver.path(f"pub-{name}")
    node.stage(volume_id, staging, _cap(kind))
    node.publish(volume_id, staging, target, _cap(kind))
    return target


def unstage(node: NodeSession, volume_id: str) -> None:
    """Undo what `node` did for one volume (unpublish, unstage) and forget it."""
    node.undo_volume(volume_id)


def staging_of(node: NodeSession, volume_id: str) -> str:
    return next(s for vid, s in node.stagings if vid == volume_id)


def fill(directory: str, seed: int) -> dict[str, str]:
    """Write a few files (a 4 MiB one, some small ones, a subdirectory), fsync them, and
    return their sha256 by relative path."""
    rng = hashlib.sha256(str(seed).encode()).digest()
    files = {"big.bin": os.urandom(4 * MiB), "sub/small.txt": rng * 100,
             "sub/deeper/empty": b"", "odd.bin": os.urandom(12345)}
    for rel, data in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def digests(directory: str, names) -> dict[str, str]:
    found = {}
    for rel in names:
        with open(os.path.join(directory, rel), "rb") as fh:
            found[rel] = hashlib.sha256(fh.read()).hexdigest()
    return found


def block_write(device: str, offset: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def block_digest(device: str, offset: int, length: int) -> str:
    fd = os.open(device, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return hashlib.sha256(os.pread(fd, length, offset)).hexdigest()
    finally:
        os.close(fd)


def device_size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def fs_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def image(driver, volume_id: str) -> str:
    return os.path.join(driver.pool, "volumes", volume_id + ".img")


# --- writers ----------------------------------------------------------------------------


def record(index: int) -> bytes:
    """Record `index` of a log: its number, then a pattern only it has."""
    head = index.to_bytes(8, "little")
    return head + (hashlib.sha256(head).digest() * (RECORD // 32))[: RECORD - 8]


def check_log(path: str) -> int:
    """A log holds whole records 0..n-1 in order; returns n."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert len(data) % RECORD == 0, f"{path}: {len(data)} bytes is not whole records"
    count = len(data) // RECORD
    for i in range(count):
        assert data[i * RECORD:(i + 1) * RECORD] == record(i), f"{path}: record {i} is torn"
    return count


class Writer:
    """A thread appending records, one write() each, to a log on each of `directories`
    in turn (record i to the first, then to the second, ...), until stopped or `limit`
    records. Holds the files open the whole time."""

    def __init__(self, directories: list[str], limit: int = 1500, name: str = "log") -> None:
        self.paths = [os.path.join(d, name) for d in directories]
        self.limit = limit
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                     for p in self.paths]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.written < self.limit:
                data = record(self.written)
                for fd in self._fds:
                    assert os.write(fd, data) == RECORD
                self.written += 1
                if self.written % 64 == 0:
                    for fd in self._fds:
                        os.fsync(fd)
                time.sleep(0.0002)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.written < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"writer stuck at {self.written} records"
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=60)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        assert not self._thread.is_alive(), "writer did not stop"
        assert self.error is None, f"writer failed: {self.error!r}"
        return self.written

    def __exit__(self, *exc: object) -> None:
        if self._fds:
            self._stop.set()
            self._thread.join(timeout=60)
            for fd in self._fds:
                os.close(fd)
            self._fds = []


def fsck_clean(path: str, fs_type: str) -> None:
    """The filesystem image at `path` (not mounted) checks clean, read-only."""
    if fs_type == "block":
        return
    argv = {"ext4": ["e2fsck", "-f", "-n", path],
            "xfs": ["xfs_repair", "-n", "-f", path],
            "btrfs": ["btrfs", "check", "--readonly", path]}[fs_type]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, \
        f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def check_restored(node: NodeSession, volume: pb.Volume, kind: str, name: str) -> str:
    """Check a volume restored from a snapshot of a busy filesystem before its first use
    (ext4, btrfs: fsck of the image as captured), then stage and publish it; returns
    the target.

    xfs is checked by `check_after_use` only: FIFREEZE quiesces and covers the xfs log
    but writes no unmount record, so xfs_repair -n of any frozen capture reports log
    changes "being ignored" (the same for `xfs_freeze -f` + cp; LVM snapshots of a
    frozen xfs too). The first mount replays that log; then xfs_repair -n is clean."""
    if kind != "xfs":
        fsck_clean(image(node.driver, volume.volume_id), kind)
    return mount(node, volume.volume_id, kind, name)


def check_after_use(node: NodeSession, volume: pb.Volume, kind: str) -> None:
    """Unpublish and unstage the volume; its filesystem then checks clean."""
    unstage(node, volume.volume_id)
    fsck_clean(image(node.driver, volume.volume_id), kind)


# --- snapshot and restore -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
@pytest.mark.parametrize("bigger", [False, True], ids=["same-size", "bigger"])
def test_snapshot_restores_the_data_as_it_was(driver, kind, bigger):
    with node_session(driver) as node:
        src = create(driver, f"src-{kind}", kind)
        target = mount(node, src.volume_id, kind, "src")
        sums = fill(target, 1)
        snap = snapshot(driver, src.volume_id, f"snap-{kind}")  # taken while mounted
        assert snap.ready_to_use and snap.size_bytes == SIZES[kind]
        # Later changes to the source are not in the snapshot.
        with open(os.path.join(target, "big.bin"), "r+b") as fh:
            fh.write(b"\0" * MiB)
        os.remove(os.path.join(target, "odd.bin"))
        source_fs = fs_bytes(target)

        size = SIZES[kind] + (GROWTH[kind] if bigger else 0)
        copy = restore(driver, f"copy-{kind}", kind, snapshot_id=snap.snapshot_id, size=size)
        assert copy.capacity_bytes == size
        assert os.path.getsize(image(driver, copy.volume_id)) == size
        restored = mount(node, copy.volume_id, kind, "copy")  # the source stays mounted
        assert digests(restored, sums) == sums
        grown = fs_bytes(restored)
        if bigger:
            # The filesystem was grown to fill the bigger volume at its stage.
            assert grown >= source_fs + GROWTH[kind] * 9 // 10, (grown, source_fs)
        else:
            assert grown == source_fs
        # The restored volume is writable and independent of the source.
        with open(os.path.join(restored, "new.bin"), "wb") as fh:
            fh.write(os.urandom(MiB))
        assert not os.path.exists(os.path.join(target, "new.bin"))


def test_snapshot_and_restore_of_a_block_volume(driver):
    with node_session(driver) as node:
        src = create(driver, "src-block", "block")
        dev = mount(node, src.volume_id, "block", "src")
        head, tail = os.urandom(MiB), os.urandom(MiB)
        block_write(dev, 0, head)
        block_write(dev, SIZES["block"] - MiB, tail)
        snap = snapshot(driver, src.volume_id, "snap-block")  # taken while published
        block_write(dev, 0, b"\0" * MiB)
        copy = restore(driver, "copy-block", "block", snapshot_id=snap.snapshot_id,
                       size=SIZES["block"] + GROWTH["block"])
        restored = mount(node, copy.volume_id, "block", "copy")
        assert device_size(restored) == SIZES["block"] + GROWTH["block"]
        assert block_digest(restored, 0, MiB) == hashlib.sha256(head).hexdigest()
        assert block_digest(restored, SIZES["block"] - MiB, MiB) == \
            hashlib.sha256(tail).hexdigest()
        assert block_digest(restored, SIZES["block"], GROWTH["block"]) == \
            hashlib.sha256(b"\0" * GROWTH["block"]).hexdigest()


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
def test_snapshot_taken_during_writes_is_consistent(driver, kind):
    """A snapshot of a mounted volume cut while a writer appends restores to a
    filesystem that checks clean and holds whole records only."""
    with node_session(driver) as node:
        src = create(driver, f"busy-{kind}", kind)
        target = mount(node, src.volume_id, kind, "src")
        sums = fill(target, 2)
        with Writer([target]) as writer:
            writer.wait_for(100)
            snap = snapshot(driver, src.volume_id, f"snap-busy-{kind}")
            at_snapshot = writer.written
            writer.wait_for(at_snapshot + 50)  # the writer goes on after the thaw
            total = writer.stop()
        assert check_log(os.path.join(target, "log")) == total
        copy = restore(driver, f"copy-busy-{kind}", kind, snapshot_id=snap.snapshot_id)
        restored = check_restored(node, copy, kind, "copy")
        captured = check_log(os.path.join(restored, "log"))
        assert 100 <= captured <= at_snapshot + 1
        assert digests(restored, sums) == sums
        check_after_use(node, copy, kind)


# --- clones -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
def test_clone_of_an_unused_volume(driver, kind):
    with node_session(driver) as node:
        src = create(driver, f"src-{kind}", kind)
        sums = fill(mount(node, src.volume_id, kind, "src"), 3)
        unstage(node, src.volume_id)
        clone = restore(driver, f"clone-{kind}", kind, volume_id=src.volume_id)
        assert clone.capacity_bytes == SIZES[kind]
        assert clone.content_source.volume.volume_id == src.volume_id
        both = [mount(node, clone.volume_id, kind, "clone"),
                mount(node, src.volume_id, kind, "src2")]
        for where in both:
            assert digests(where, sums) == sums


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
def test_clone_of_a_volume_in_use_and_being_written(driver, kind):
    """The source is staged, published and appended to while it is cloned: the clone is
    a clean filesystem with the data and whole records, and the writer never noticed."""
    with node_session(driver) as node:
        src = create(driver, f"src-{kind}", kind)
        target = mount(node, src.volume_id, kind, "src")
        sums = fill(target, 4)
        with Writer([target]) as writer:
            writer.wait_for(100)
            clone = restore(driver, f"clone-{kind}", kind, volume_id=src.volume_id,
                            size=SIZES[kind] + GROWTH[kind])
            at_clone = writer.written
            writer.wait_for(at_clone + 50)
            total = writer.stop()
        assert check_log(os.path.join(target, "log")) == total
        copy = check_restored(node, clone, kind, "clone")
        assert digests(copy, sums) == sums
        assert 100 <= check_log(os.path.join(copy, "log")) <= at_clone + 1
        assert fs_bytes(copy) >= fs_bytes(target) + GROWTH[kind] * 9 // 10
        check_after_use(node, clone, kind)


# --- expansion --------------------------------------------------------------------------


def _holder(path: str) -> subprocess.Popen:
    """A process that opens `path` for appending, says "ready", and on a line from its
    stdin appends 1 MiB through the same descriptor, fsyncs and says "done"."""
    code = (
        "import os, sys\n"
        f"f = open({path!r}, 'ab')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "f.write(b'z' * (1 << 20)); f.flush(); os.fsync(f.fileno())\n"
        "print('done', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _finish(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"
    assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_online_expansion_while_a_file_is_open(driver, kind):
    with node_session(driver) as node:
        vol = create(driver, f"grow-{kind}", kind)
        target = mount(node, vol.volume_id, kind, "v")
        staging = staging_of(node, vol.volume_id)
        sums = fill(target, 5)
        before = fs_bytes(target)
        proc = _holder(os.path.join(target, "held.bin"))
        try:
            new_size = SIZES[kind] + GROWTH[kind]
            rsp = expand(driver, vol.volume_id, kind, new_size)
            assert rsp.capacity_bytes == new_size and rsp.node_expansion_required
            assert node_expand(driver, vol.volume_id, target, staging, kind,
                               new_size).capacity_bytes == new_size
            _finish(proc)  # the open descriptor still works after the grow
        finally:
            proc.kill()
            proc.wait()
        assert fs_bytes(target) >= before + GROWTH[kind] * 9 // 10
        assert digests(target, sums) == sums
        assert os.path.getsize(os.path.join(target, "held.bin")) == MiB
        # Idempotent.
        assert node_expand(driver, vol.volume_id, staging, staging, kind,
                           new_size).capacity_bytes == new_size


@pytest.mark.skipif(has_cap_sys_resource(), reason="this process can grow ext4 online")
def test_online_ext4_expansion_without_cap_sys_resource_is_refused(driver):
    """Without CAP_SYS_RESOURCE the kernel refuses EXT4_IOC_RESIZE_FS: NodeExpandVolume
    says so (FAILED_PRECONDITION naming the capability), nothing breaks, and the
    filesystem is grown at the volume's next stage, as the message promises."""
    with node_session(driver) as node:
        vol = create(driver, "grow-ext4", "ext4")
        target = mount(node, vol.volume_id, "ext4", "v")
        staging = staging_of(node, vol.volume_id)
        sums = fill(target, 6)
        before = fs_bytes(target)
        new_size = SIZES["ext4"] + GROWTH["ext4"]
        proc = _holder(os.path.join(target, "held.bin"))
        try:
            assert expand(driver, vol.volume_id, "ext4", new_size).node_expansion_required
            expect_error(driver.client.node.NodeExpandVolume,
                         pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=target,
                                                    staging_target_path=staging),
                         Code.FAILED_PRECONDITION, vol.volume_id, "ext4", "CAP_SYS_RESOURCE",
                         "next stage")
            _finish(proc)
        finally:
            proc.kill()
            proc.wait()
        assert fs_bytes(target) == before
        assert digests(target, sums) == sums
        unstage(node, vol.volume_id)
        target = mount(node, vol.volume_id, "ext4", "again")
        assert fs_bytes(target) >= before + GROWTH["ext4"] * 9 // 10
        assert digests(target, sums) == sums


@pytest.mark.skipif(not has_cap_sys_resource(), reason=NO_CAP_SYS_RESOURCE)
def test_online_ext4_expansion_while_a_file_is_open(driver):
    with node_session(driver) as node:
        vol = create(driver, "grow-ext4", "ext4")
        target = mount(node, vol.volume_id, "ext4", "v")
        staging = staging_of(node, vol.volume_id)
        sums = fill(target, 7)
        before = fs_bytes(target)
        new_size = SIZES["ext4"] + GROWTH["ext4"]
        proc = _holder(os.path.join(target, "held.bin"))
        try:
            expand(driver, vol.volume_id, "ext4", new_size)
            node_expand(driver, vol.volume_id, target, staging, "ext4", new_size)
            _finish(proc)
        finally:
            proc.kill()
            proc.wait()
        assert fs_bytes(target) >= before + GROWTH["ext4"] * 9 // 10
        assert digests(target, sums) == sums


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs"])
def test_offline_expansion_is_applied_at_the_next_stage(driver, kind):
    with node_session(driver) as node:
        vol = create(driver, f"off-{kind}", kind)
        target = mount(node, vol.volume_id, kind, "v")
        sums = fill(target, 8)
        before = fs_bytes(target)
        unstage(node, vol.volume_id)
        new_size = SIZES[kind] + GROWTH[kind]
        assert expand(driver, vol.volume_id, kind, new_size).capacity_bytes == new_size
        assert os.path.getsize(image(driver, vol.volume_id)) == new_size
        target = mount(node, vol.volume_id, kind, "again")
        assert fs_bytes(target) >= before + GROWTH[kind] * 9 // 10
        assert digests(target, sums) == sums
        # Nothing is left for NodeExpandVolume to do.
        grown = fs_bytes(target)
        node_expand(driver, vol.volume_id, target, staging_of(node, vol.volume_id), kind,
                    new_size)
        assert fs_bytes(target) == grown


def test_block_volume_expansion(driver):
    with node_session(driver) as node:
        vol = create(driver, "grow-block", "block")
        dev = mount(node, vol.volume_id, "block", "v")
        data = os.urandom(2 * MiB)
        block_write(dev, SIZES["block"] - len(data), data)  # the old end
        new_size = SIZES["block"] + GROWTH["block"]
        rsp = expand(driver, vol.volume_id, "block", new_size)
        assert rsp.capacity_bytes == new_size and not rsp.node_expansion_required
        assert device_size(dev) == new_size  # the controller refreshed the device
        assert node_expand(driver, vol.volume_id, dev, staging_of(node, vol.volume_id),
                           "block", new_size).capacity_bytes == new_size
        assert block_digest(dev, SIZES["block"] - len(data), len(data)) == \
            hashlib.sha256(data).hexdigest()
        more = os.urandom(MiB)
        block_write(dev, new_size - MiB, more)  # the new end is usable
        assert block_digest(dev, new_size - MiB, MiB) == hashlib.sha256(more).hexdigest()
        stats = driver.client.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=dev), timeout=30)
        assert stats.usage[0].total == new_size


# --- group snapshots -----------------------------------------------------------------------


def test_group_snapshot_of_busy_volumes_restores_each_consistently(driver):
    """Two mounted filesystems written by one thread (record i to the first, then to the
    second) and a block volume are snapshotted together. Each restores with its data
    intact, and the two logs are write-order consistent: the second never has a record
    the first lacks, and lags by at most the record in flight."""
    with node_session(driver) as node:
        vols = {kind: create(driver, f"g-{kind}", kind) for kind in ("ext4", "xfs", "block")}
        ext4 = mount(node, vols["ext4"].volume_id, "ext4", "ext4")
        xfs = mount(node, vols["xfs"].volume_id, "xfs", "xfs")
        dev = mount(node, vols["block"].volume_id, "block", "block")
        sums = {"ext4": fill(ext4, 10), "xfs": fill(xfs, 11)}
        raw = os.urandom(4 * MiB)
        block_write(dev, MiB, raw)
        with Writer([ext4, xfs]) as writer:
            writer.wait_for(100)
            group = group_stub(driver).CreateVolumeGroupSnapshot(
                pb.CreateVolumeGroupSnapshotRequest(
                    name="group-busy", source_volume_ids=[v.volume_id for v in vols.values()]),
                timeout=120).group_snapshot
            at_group = writer.written
            writer.wait_for(at_group + 50)
            writer.stop()
        assert group.ready_to_use and len(group.snapshots) == 3
        block_write(dev, MiB, b"\0" * MiB)  # after the snapshot: not in it
        members = {s.source_volume_id: s for s in group.snapshots}
        restored, copies = {}, {}
        for kind, vol in vols.items():
            member = members[vol.volume_id]
            assert member.group_snapshot_id == group.group_snapshot_id
            copies[kind] = restore(driver, f"r-{kind}", kind, snapshot_id=member.snapshot_id)
            restored[kind] = check_restored(node, copies[kind], kind, f"r-{kind}")
        for kind in ("ext4", "xfs"):
            assert digests(restored[kind], sums[kind]) == sums[kind]
        assert block_digest(restored["block"], MiB, len(raw)) == hashlib.sha256(raw).hexdigest()
        first = check_log(os.path.join(restored["ext4"], "log"))
        second = check_log(os.path.join(restored["xfs"], "log"))
        assert 100 <= second <= first <= second + 1 <= at_group + 2, (first, second, at_group)
        for kind in ("ext4", "xfs"):
            check_after_use(node, copies[kind], kind)

"""Driver restarts and node reboots with many published volumes.

- A restart of the driver process (kernel state stays) keeps every published volume
  usable: its data is there, it takes new writes, and every later call works.
- A simulated node reboot (the driver stops; every mount and loop device of this test's
  pool is gone; the driver starts fresh) is repaired by the calls kubelet makes after a
  reboot, NodeStageVolume and NodePublishVolume again: every volume comes back with its
  data (checksums).
- Loop devices and mounts that belong to no live volume are cleaned up at start-up and
  reported in the driver's last reconcile report; anything that is not the pool's is
  left alone.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conftest import needs_root
from tests.kernel_leaks import clean_under, loops_under, mounts_under
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import disagreements, payload, read_digest, write_data

pytestmark = [pytest.mark.integration, needs_root()]

SIZE = 32 * MiB
# Ten volumes: seven filesystems and three raw block volumes.
KINDS = ["ext4"] * 7 + ["block"] * 3


class Fleet:
    """Volumes created, attached, staged and published through gRPC, each with data."""

    def __init__(self, driver, kinds: list[str]) -> None:
        self.driver = driver
        self.kinds = kinds
        self.ids: list[str] = []
        self.digests: dict[int, str] = {}  # volume index -> sha256 of its data
        self.published: list[tuple[int, str, bool]] = []  # (index, target, readonly)
        self.staged: list[int] = []

    @property
    def v(self) -> Volumes:
        return Volumes(self.driver.client)

    def staging(self, i: int) -> str:
        return self.driver.path(f"stage-{i}")

    def target(self, i: int, suffix: str = "") -> str:
        return self.driver.path(f"t-{i}{suffix}")

    def bring_up(self) -> None:
        for i, kind in enumerate(self.kinds):
            vid = self.v.create(f"fleet-{i}", kind, SIZE).volume_id
            self.ids.append(vid)
            self.v.attach(vid, kind)
            self.v.stage(vid, kind, self.staging(i))
            self.staged.append(i)
            self.publish(i, self.target(i))
            self.digests[i] = write_data(self.target(i), kind, payload(f"first-{i}"))
        # A second, read-only publish of one filesystem and one block volume: a block
        # one gets a read-only loop device of its own.
        for i in (0, len(self.kinds) - 1):
            self.publish(i, self.target(i, "-ro"), readonly=True)

    def publish(self, i: int, target: str, readonly: bool = False) -> None:
        self.v.publish(self.ids[i], self.kinds[i], self.staging(i), target, readonly)
        if (i, target, readonly) not in self.published:
            self.published.append((i, target, readonly))

    def check_data(self) -> None:
        """Every target of every volume shows the volume's latest data."""
        for i, target, _ in self.published:
            kind = self.kinds[i]
            assert read_digest(target, kind, MiB) == self.digests[i], \
                f"volume {i} ({kind}) at {target}: data differs"

    def write_again(self, tag: str) -> None:
        """New data through each volume's first target; read-only targets refuse."""
        for i, target, readonly in self.published:
            kind = self.kinds[i]
            if readonly:
                with pytest.raises(OSError):
                    write_data(target, kind, b"x" * 4096, name="ro-probe")
            elif target == self.target(i):
                self.digests[i] = write_data(target, kind, payload(f"{tag}-{i}"))

    def check_stats_and_health(self) -> None:
        for i, target, _ in self.published:
            stats = self.driver.client.node.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id=self.ids[i], volume_path=target),
                timeout=60)
            health = self.driver.client.node.NodeGetVolumeHealth(
                pb.NodeGetVolumeHealthRequest(volume_id=self.ids[i], volume_publish_path=target),
                timeout=60).volume_health.health_statuses
            assert not health, health
            assert stats.usage[0].total > 0
        for vid in self.ids:
            condition = self.v.condition(vid)
            assert not condition.abnormal, condition.message

    def tear_down(self) -> None:
        """Unpublish, unstage, detach, delete everything (idempotent calls, so it can
        run again after a failure)."""
        for i, target, _ in reversed(self.published):
            self.v.unpublish(self.ids[i], target)
        for i in reversed(self.staged):
            self.v.unstage(self.ids[i], self.staging(i))
        for vid in self.ids:
            self.v.detach(vid)
            self.v.delete(vid)


@pytest.fixture
def fleet(driver):
    f = Fleet(driver, KINDS)
    try:
        yield f
    finally:
        f.tear_down()
    assert os.listdir(os.path.join(driver.pool, "volumes")) == []
    assert loops_under(driver.workdir) == [] and mounts_under(driver.workdir) == []


def test_restart_with_ten_published_volumes_keeps_them_usable(driver, fleet):
    fleet.bring_up()
    loops_before = loops_under(driver.workdir)
    mounts_before = sorted(mounts_under(driver.workdir))

    driver.restart()

    report = driver.server.driver.last_reconcile
    assert report["left_alone"] == [] and report.rebuild["adopted_stagings"] == [], report
    assert report["errors"] == [], report
    # The restart changed nothing in the kernel...
    assert loops_under(driver.workdir) == loops_before
    assert sorted(mounts_under(driver.workdir)) == mounts_before
    assert disagreements(driver.workdir, driver.pool) == []
    # ...and every volume works: old data, new writes, repeated kubelet calls, stats.
    fleet.check_data()
    for i, target, readonly in fleet.published:
        fleet.v.stage(fleet.ids[i], fleet.kinds[i], fleet.staging(i))
        fleet.publish(i, target, readonly)
    fleet.write_again("second")
    fleet.check_data()
    fleet.check_stats_and_health()
    # A new read-write publish after the restart must be writable (it must not be
    # given the read-only device made for the read-only block publish).
    last = len(KINDS) - 1
    fleet.publish(last, fleet.target(last, "-new"))
    fleet.digests[last] = write_data(fleet.target(last, "-new"), "block", payload("third"))
    fleet.check_data()


def test_node_reboot_then_kubelet_stage_and_publish_bring_every_volume_back(driver, fleet):
    fleet.bring_up()
    # The reboot: the driver goes away, and so does all kernel state of this pool.
    driver.stop()
    clean_under(driver.workdir)
    assert loops_under(driver.workdir) == [] and mounts_under(driver.workdir) == []
    driver.restart()

    report = driver.server.driver.last_reconcile
    assert report["errors"] == [] and report["unknown_images"] == [], report
    assert report["rolled_back_creates"] == [] and report["finished_deletes"] == [], report
    for vid in fleet.ids:
        # Staged in the catalog, but nothing attached: reported, not hidden.
        assert fleet.v.condition(vid).abnormal
    # What kubelet does after a reboot: stage every volume again, publish every target.
    for i in fleet.staged:
        fleet.v.stage(fleet.ids[i], fleet.kinds[i], fleet.staging(i))
    for i, target, readonly in fleet.published:
        fleet.publish(i, target, readonly)
    assert disagreements(driver.workdir, driver.pool) == []
    fleet.check_data()
    fleet.write_again("second")
    fleet.check_data()
    fleet.check_stats_and_health()


def test_unclaimed_loop_devices_and_mounts_are_adopted_or_reported_never_taken_down(driver):
    v = Volumes(driver.client)
    host = driver.server.driver.host
    vid = v.create("orphan", "ext4", SIZE).volume_id
    volumes_dir = os.path.join(driver.pool, "volumes")
    image = os.path.join(volumes_dir, vid + ".img")
    subprocess.run(["mkfs.ext4", "-q", image], check=True, capture_output=True)
    # 1. A volume that is not staged, yet attached and mounted (a lost catalog, or a
    #    person with losetup): a pod may be using it, so it is adopted as staged.
    orphan = host.loops.attach(image)
    mount_point = driver.path("orphan-mnt")
    os.mkdir(mount_point)
    host.mounts.mount(orphan.path, mount_point, "ext4")
    # 2. A loop device still holding the deleted file of a volume that is gone: no
    #    record says it is abandoned, so it is reported and left attached.
    gone = os.path.join(volumes_dir, "vol-" + "e" * 32 + ".img")
    with open(gone, "wb") as fh:
        fh.truncate(SIZE)
    ghost = host.loops.attach(gone)
    os.unlink(gone)
    # 3. Not the pool's: a loop device on a file elsewhere in the test's directory.
    other_file = driver.path("not-pool.img")
    with open(other_file, "wb") as fh:
        fh.truncate(SIZE)
    other = host.loops.attach(other_file)
    try:
        driver.restart()
        report = driver.server.driver.last_reconcile
        assert any(orphan.path in item for item in report.rebuild["adopted_stagings"]), report
        assert any(ghost.path in item for item in report["left_alone"]), report
        assert not any(other.path in item for item in report["left_alone"]), report
        assert report["errors"] == [], report
        assert mounts_under(mount_point) == [mount_point]
        assert sorted(loops_under(driver.workdir)) == sorted([orphan.path, ghost.path,
                                                              other.path])
        staging = driver.server.driver.catalog.get_staging(vid)
        assert staging is not None and staging.staging_path == mount_point
        # The adopted staging is the volume's: the CO's unstage takes it down.
        v = Volumes(driver.client)
        v.unstage(vid, mount_point)
        assert mounts_under(mount_point) == []
        assert host.loops.find_by_backing_file(image) == []
        v.delete(vid)
    finally:
        for dev in (orphan, ghost, other):
            if host.loops.get(dev.path) is not None and \
                    dev.path in loops_under(driver.workdir):
                if mounts_under(mount_point):
                    host.mounts.unmount(mount_point)
                host.loops.detach(dev.path)

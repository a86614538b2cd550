"""Unit tests of the driver core (controller, node, reconciliation) over the in-memory
fakes of the Linux layer. Files are real (a temp pool); loop devices, mounts and mkfs
are fakes whose honesty tests/integration/test_linux_contract.py checks."""

from __future__ import annotations

import errno
import os

import pytest

from csi_py.config import Config
from csi_py.core.driver import Driver
from csi_py.domain.errors import Aborted, FailedPrecondition, NotFound
from csi_py.domain.model import (
    CapacityRange,
    Volume,
    VolumeState,
)
from csi_py.linux.errors import FreezeError, MountError
from tests.fakes import fake_host
from tests.lifecycle import CORE_BLOCK, CORE_EXT4, MiB

MOUNT, BLOCK = CORE_EXT4, CORE_BLOCK


@pytest.fixture
def env(tmp_path):
    host = fake_host()
    config = Config(endpoint="unix:///unused.sock", node_id="n1", pool=str(tmp_path / "pool"),
                    reserve_bytes=0).validated()
    driver = Driver(config, host)
    driver.start()
    (tmp_path / "stage").mkdir()
    yield driver, host, tmp_path
    driver.close()


def new_volume(driver, name="v", cap=MOUNT, size=64 * MiB) -> Volume:
    return driver.controller.volumes.create_volume(name, CapacityRange(size, 0), [cap], {}, {}, [])


def ops(host) -> list[str]:
    return [a.op for fake in (host.loops, host.mounts, host.fs) for a in fake.actions]


def test_whole_life_makes_and_undoes_each_kernel_change_once(env):
    driver, host, tmp = env
    vol = new_volume(driver)
    stage, target = str(tmp / "stage"), str(tmp / "target")
    driver.node.stage(vol.id, stage, MOUNT, {})
    driver.node.stage(vol.id, stage, MOUNT, {})  # idempotent: nothing more happens
    driver.node.publish(vol.id, target, stage, MOUNT, False)
    driver.node.publish(vol.id, target, stage, MOUNT, False)
    assert sorted(ops(host)) == ["attach", "bind_mount", "format", "mount", "set_read_ahead"]
    driver.node.unpublish(vol.id, target)
    driver.node.unpublish(vol.id, target)
    driver.node.unstage(vol.id, stage)
    driver.node.unstage(vol.id, stage)
    assert sorted(ops(host)) == ["attach", "bind_mount", "detach", "format", "mount",
                                 "set_read_ahead", "unmount", "unmount"]
    assert not os.path.exists(target)
    driver.controller.volumes.delete_volume(vol.id)
    assert not os.path.exists(driver.pool.image_path(vol.id))


def test_restage_never_formats_again(env):
    driver, host, tmp = env
    vol = new_volume(driver)
    stage = str(tmp / "stage")
    for _ in range(2):
        driver.node.stage(vol.id, stage, MOUNT, {})
        driver.node.unstage(vol.id, stage)
    assert ops(host).count("format") == 1 and ops(host).count("attach") == 2


def test_failed_mount_detaches_and_forgets_the_stage(env):
    driver, host, tmp = env
    vol = new_volume(driver)
    host.mounts.fail_next("mount", MountError("boom", target="x", errno=5))
    with pytest.raises(MountError):
        driver.node.stage(vol.id, str(tmp / "stage"), MOUNT, {})
    assert host.loops.list_attached() == []
    assert driver.catalog.get_staging(vol.id) is None
    driver.node.stage(vol.id, str(tmp / "stage"), MOUNT, {})  # a retry works
    driver.node.unstage(vol.id, str(tmp / "stage"))


def test_unstage_while_published_changes_nothing(env):
    driver, host, tmp = env
    vol = new_volume(driver)
    stage, target = str(tmp / "stage"), str(tmp / "target")
    driver.node.stage(vol.id, stage, MOUNT, {})
    driver.node.publish(vol.id, target, stage, MOUNT, False)
    before = list(ops(host))
    with pytest.raises(FailedPrecondition, match="still published"):
        driver.node.unstage(vol.id, stage)
    assert ops(host) == before
    driver.node.publish(vol.id, target, stage, MOUNT, False)  # still staged and usable
    driver.node.unpublish(vol.id, target)
    driver.node.unstage(vol.id, stage)


def test_a_busy_volume_answers_aborted(env):
    driver, _, tmp = env
    vol = new_volume(driver)
    with driver.locks.hold(vol.id, "test"):
        with pytest.raises(Aborted, match="already in progress"):
            driver.node.stage(vol.id, str(tmp / "stage"), MOUNT, {})
        with pytest.raises(Aborted):
            driver.controller.volumes.delete_volume(vol.id)


def test_publish_before_stage_is_refused(env):
    driver, _, tmp = env
    vol = new_volume(driver)
    with pytest.raises(FailedPrecondition, match="not staged"):
        driver.node.publish(vol.id, str(tmp / "t"), str(tmp / "stage"), MOUNT, False)


def test_read_only_block_publish_gets_and_returns_its_own_device(env):
    driver, host, tmp = env
    vol = new_volume(driver, cap=BLOCK)
    stage, target = str(tmp / "stage"), str(tmp / "t")
    driver.node.stage(vol.id, stage, BLOCK, {})
    driver.node.publish(vol.id, target, stage, BLOCK, True)
    devices = host.loops.find_by_backing_file(driver.pool.image_path(vol.id))
    assert sorted(d.read_only for d in devices) == [False, True]
    driver.node.unpublish(vol.id, target)
    assert [d.read_only for d in host.loops.find_by_backing_file(
        driver.pool.image_path(vol.id))] == [False]
    driver.node.unstage(vol.id, stage)


def test_reconcile_settles_creates_finishes_deletes_and_adopts_devices(env):
    driver, host, tmp = env
    kept = new_volume(driver, "kept")
    leaked = new_volume(driver, "leaked", cap=BLOCK)
    half_created = new_volume(driver, "half-created")
    committed = new_volume(driver, "committed")
    half_deleted = new_volume(driver, "half-deleted")
    driver.catalog.set_volume_state(half_created.id, VolumeState.CREATING)
    driver.records.remove(half_created.id)  # killed before its commit point, the record
    # Killed after its record was written (its commit point), before READY was set.
    driver.catalog.set_volume_state(committed.id, VolumeState.CREATING)
    driver.catalog.set_volume_state(half_deleted.id, VolumeState.DELETING)
    dev = host.loops.attach(driver.pool.image_path(leaked.id))  # attached, never recorded
    stray = os.path.join(driver.pool.volumes_dir, "vol-" + "f" * 32 + ".img")
    open(stray, "wb").close()
    temp = os.path.join(driver.pool.volumes_dir, ".tmp-abc")
    open(temp, "wb").close()

    report = driver.start()

    assert report["rolled_back_creates"] == [half_created.id]
    assert report["finished_creates"] == [committed.id]
    assert driver.catalog.get_volume(committed.id).state is VolumeState.READY
    assert os.path.exists(driver.pool.image_path(committed.id))
    assert report["finished_deletes"] == [half_deleted.id]
    # A device on a known volume's image with no staging record (a lost catalog, a
    # person with losetup) is adopted, never detached: a pod may be using it.
    assert any(dev.path in item for item in report.rebuild["adopted_stagings"])
    adopted = driver.catalog.get_staging(leaked.id)
    assert adopted is not None and adopted.device == dev.path and adopted.staged
    assert report["unknown_images"] == [stray] and os.path.exists(stray)
    assert not os.path.exists(temp)
    assert driver.catalog.get_volume(half_created.id) is None
    assert not os.path.exists(driver.pool.image_path(half_deleted.id))
    assert driver.catalog.get_volume(kept.id) is not None
    assert [d.path for d in host.loops.list_attached()] == [dev.path]
    # The adopted staging is taken down by the CO's unstage, at whatever path it names.
    driver.node.unstage(leaked.id, os.path.join(tmp, "some-staging-path"))
    assert host.loops.list_attached() == []


def test_requests_before_reconciliation_are_unavailable(tmp_path):
    from csi_py.domain.errors import Unavailable

    config = Config(endpoint="unix:///u.sock", node_id="n1",
                    pool=str(tmp_path / "pool")).validated()
    driver = Driver(config, fake_host())
    with pytest.raises(Unavailable, match="reconciling"):
        driver.require_ready()
    driver.start()
    driver.require_ready()
    driver.close()


def test_unknown_volume_is_not_found_on_the_node(env):
    driver, _, tmp = env
    with pytest.raises(NotFound):
        driver.node.stage("vol-" + "0" * 32, str(tmp / "stage"), MOUNT, {})


def test_a_retried_restore_succeeds_after_its_snapshot_is_gone(env):
    """The CO may retry a CreateVolume that finished; by then the snapshot may have been
    deleted. The answer comes from the record: the same volume."""
    from csi_py.core.sources import ContentSource

    driver, _, _ = env
    vol = new_volume(driver, "src", cap=BLOCK)
    snap = driver.snapshots.create(vol.id, "snap", {})
    source = ContentSource("snapshot", snap.id)
    first = driver.controller.volumes.create_volume(
        "restored", CapacityRange(0, 0), [BLOCK], {}, {}, [], source=source)
    driver.snapshots.delete(snap.id)
    again = driver.controller.volumes.create_volume(
        "restored", CapacityRange(0, 0), [BLOCK], {}, {}, [], source=source)
    assert again.id == first.id and again.capacity_bytes == vol.capacity_bytes


def test_a_snapshot_whose_thaw_fails_is_not_reported_cut(env):
    """A thaw that fails after the copy leaves the volume frozen, its pod hanging: the
    snapshot is undone and the error raised, not logged away; a retry, whose freeze
    takes the frozen filesystem over, thaws it and cuts the snapshot."""
    driver, host, tmp = env
    vol = new_volume(driver)
    stage = str(tmp / "stage")
    driver.node.stage(vol.id, stage, MOUNT, {})
    host.fs.fail_next("thaw", FreezeError("thaw failed", path=stage, errno=errno.EIO))
    with pytest.raises(FreezeError, match="thaw failed"):
        driver.snapshots.create(vol.id, "snap", {})
    assert driver.catalog.get_snapshot_by_name("snap") is None
    assert os.listdir(driver.pool.snapshots_dir) == []
    assert host.kernel.frozen  # what the failed thaw left
    snap = driver.snapshots.create(vol.id, "snap", {})
    assert os.path.exists(driver.pool.snapshot_path(snap.id))
    assert host.kernel.frozen == set()
    driver.node.unstage(vol.id, stage)

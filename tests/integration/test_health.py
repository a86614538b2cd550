"""Volume health for real: each abnormal condition is produced on real loop devices,
filesystems and pools, and both ControllerGetVolume and NodeGetVolumeStats must report
it (abnormal=True) with a message that names the volume and says what to do. Healthy
volumes report abnormal=False. The broken volumes must still unpublish, unstage and
delete cleanly: the `workdir` fixture fails a test that leaves a loop device or mount."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.linux import real_host
from csi_py.rpc.client import block_capability, mount_capability
from tests.conformance.helpers import SMALL, MiB, NodeSession, create, node_session
from tests.conftest import RunningDriver, _start

pytestmark = pytest.mark.integration

EXT4 = mount_capability("ext4")
BLOCK = block_capability()


def condition(driver, volume_id: str) -> pb.VolumeCondition:
    return driver.client.controller.ControllerGetVolume(
        pb.ControllerGetVolumeRequest(volume_id=volume_id), timeout=30).status.volume_condition


def node_condition(driver, volume_id: str, path: str) -> pb.VolumeCondition:
    rsp = driver.client.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path), timeout=30)
    assert rsp.usage, "stats of a broken volume are still reported"
    return rsp.volume_condition


def assert_abnormal(found: pb.VolumeCondition, *words: str) -> None:
    assert found.abnormal, f"expected an abnormal condition, got {found}"
    for word in words:
        assert word.lower() in found.message.lower(), \
            f"condition does not name {word!r}: {found.message!r}"


def assert_normal(found: pb.VolumeCondition) -> None:
    assert not found.abnormal, found.message
    assert found.message


def image(driver, volume_id: str) -> str:
    return os.path.join(driver.pool, "volumes", volume_id + ".img")


def publish(node: NodeSession, volume_id: str, cap: pb.VolumeCapability) -> tuple[str, str]:
    """Stage and publish; returns (staging path, target path)."""
    staging, target = node.driver.path(f"st-{volume_id}"), node.driver.path(f"t-{volume_id}")
    node.stage(volume_id, staging, cap)
    node.publish(volume_id, staging, target, cap)
    return staging, target


def loop_of(driver, volume_id: str) -> str:
    """The volume's loop device (also when its backing file was deleted)."""
    want = image(driver, volume_id)
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as fh:
                if fh.read().strip().removesuffix(" (deleted)") == want:
                    return f"/dev/{name}"
        except OSError:
            continue
    raise AssertionError(f"no loop device for {want}")


def delete(driver, volume_id: str) -> None:
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id),
                                          timeout=30)


# --- healthy ----------------------------------------------------------------------------


def test_healthy_volumes_report_normal_conditions(driver):
    idle = create(driver, "h-idle")
    assert_normal(condition(driver, idle.volume_id))
    with node_session(driver) as node:
        for name, cap in (("h-mount", EXT4), ("h-block", BLOCK)):
            vol = create(driver, name, caps=[cap])
            staging, target = publish(node, vol.volume_id, cap)
            assert_normal(condition(driver, vol.volume_id))
            assert_normal(node_condition(driver, vol.volume_id, target))
            if cap is EXT4:
                assert_normal(node_condition(driver, vol.volume_id, staging))


# --- the backing file -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_missing_backing_file_of_an_unstaged_volume(driver, how):
    vol = create(driver, "h-missing")
    path = image(driver, vol.volume_id)
    if how == "removed":
        os.remove(path)
    else:
        os.rename(path, path + ".moved")
    assert_abnormal(condition(driver, vol.volume_id), vol.volume_id, path, "missing",
                    "restored from a backup")
    if how == "renamed":
        os.rename(path + ".moved", path)  # put back: healthy again
        assert_normal(condition(driver, vol.volume_id))
    delete(driver, vol.volume_id)
    assert not os.path.exists(path)


def test_missing_backing_file_of_a_staged_volume(driver):
    """The file is deleted while the volume is mounted: the loop device keeps the data
    alive, but the next reboot loses it. Both services say so; the volume still comes
    down cleanly (its device, whose backing file is "(deleted)", is detached)."""
    vol = create(driver, "h-gone")
    path = image(driver, vol.volume_id)
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        with open(os.path.join(target, "f"), "wb") as fh:
            fh.write(b"x" * MiB)
        os.remove(path)
        words = (vol.volume_id, path, "missing")
        assert_abnormal(condition(driver, vol.volume_id), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, target), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, staging), *words)
    delete(driver, vol.volume_id)


@pytest.mark.parametrize("staged", [False, True], ids=["unstaged", "staged"])
def test_truncated_backing_file(driver, staged):
    vol = create(driver, "h-short", caps=[EXT4, BLOCK])
    path = image(driver, vol.volume_id)
    words = (vol.volume_id, path, "truncated", str(SMALL // 2), str(SMALL), "lost")
    with node_session(driver) as node:
        if staged:
            _, target = publish(node, vol.volume_id, BLOCK)
        os.truncate(path, SMALL // 2)
        assert_abnormal(condition(driver, vol.volume_id), *words)
        if staged:
            assert_abnormal(node_condition(driver, vol.volume_id, target), *words)
    delete(driver, vol.volume_id)


# --- the loop device --------------------------------------------------------------------


def test_loop_device_detached_behind_the_drivers_back(driver):
    """LOOP_CLR_FD on a staged, published block volume's device: pods get I/O errors.
    Both services report it and say how to recover; the dead publish and the staging
    still come down, and staging again makes the volume healthy."""
    vol = create(driver, "h-detached", caps=[BLOCK])
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, BLOCK)
        device = loop_of(driver, vol.volume_id)
        real_host().loops.detach(device)
        assert real_host().loops.get(device) is None
        words = (vol.volume_id, "loop device", "detached", "NodeStageVolume")
        assert_abnormal(condition(driver, vol.volume_id), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, target), *words)
        # Unpublish and unstage take the dead publish down (the session checks them).
        node.close()
        node.targets.clear()
        node.stagings.clear()
        assert not os.path.exists(target)
        assert_normal(condition(driver, vol.volume_id))
        # Staged again, it works again.
        staging, target = publish(node, vol.volume_id, BLOCK)
        assert_normal(node_condition(driver, vol.volume_id, target))


# --- the filesystem ---------------------------------------------------------------------


def test_ext4_errors(driver):
    vol = create(driver, "h-fserr")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        assert_normal(condition(driver, vol.volume_id))
        name = os.path.basename(loop_of(driver, vol.volume_id))
        with open(f"/sys/fs/ext4/{name}/trigger_fs_error", "w") as fh:
            fh.write("1")
        # ext4 records an error in its superblock from a work item, a moment after
        # the error itself: wait (bounded) for the count to appear.
        deadline = time.monotonic() + 10
        while not condition(driver, vol.volume_id).abnormal and time.monotonic() < deadline:
            time.sleep(0.05)
        words = (vol.volume_id, "ext4", "error", "fsck")
        assert_abnormal(condition(driver, vol.volume_id), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, target), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, staging), *words)


# --- the pool -----------------------------------------------------------------------------


POOL_FS_BYTES = 64 * MiB


@pytest.fixture
def small_pool_driver(workdir: str) -> Iterator[RunningDriver]:
    """A driver whose pool is a 64 MiB ext4 (itself on a loop device, its image in the
    workdir) mounted at the pool path before the driver starts; unmounted and detached
    after the driver stops."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and /dev/loop-control (real loop devices and mounts)")
    host = real_host()
    backing = os.path.join(workdir, "poolfs.img")
    with open(backing, "wb") as fh:
        fh.truncate(POOL_FS_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", backing], check=True,
                   capture_output=True)
    pool = os.path.join(workdir, "pool")
    os.mkdir(pool, 0o700)
    device = host.loops.attach(backing)
    try:
        host.mounts.mount(device.path, pool, "ext4", ["nosuid", "nodev"])
        try:
            os.chmod(pool, 0o700)
            options = {"reserve_bytes": MiB, "thin_overcommit": 10.0}
            server, client = _start(workdir, options)
            running = RunningDriver(workdir, f"{workdir}/csi.sock", pool, server, client,
                                    options)
            try:
                yield running
            finally:
                running.stop()
        finally:
            host.mounts.unmount(pool)
    finally:
        host.loops.detach(device.path)


def test_thin_pool_out_of_space(small_pool_driver):
    """A thin volume promises space its pool no longer has: both services warn before
    writes start failing, and say what to do."""
    driver = small_pool_driver
    vol = create(driver, "h-thin")
    filler = os.path.join(driver.pool, "filler")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        assert_normal(condition(driver, vol.volume_id))
        st = os.statvfs(driver.pool)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - 256 * 1024)
        finally:
            os.close(fd)
        words = (vol.volume_id, "thin", driver.pool, "free space in the pool")
        assert_abnormal(condition(driver, vol.volume_id), *words)
        assert_abnormal(node_condition(driver, vol.volume_id, target), *words)
        os.remove(filler)
        assert_normal(condition(driver, vol.volume_id))
    delete(driver, vol.volume_id)

"""Volume and pool health for real (CSI v1.13 health RPCs): each condition is produced
on real loop devices, filesystems and pools, and every health RPC that can see it must
report it with the right type and CamelCase reason, and a message that names the volume
and says what to do: ControllerGetVolumeHealth, ControllerListVolumeHealth and
NodeGetVolumeHealth for a volume, NodeGetStorageHealth for the pool. Healthy volumes
report no condition and are not listed. The broken volumes must still unpublish,
unstage and delete cleanly: the `workdir` fixture fails a test that leaves a loop
device or mount."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.linux import real_host
from csi_py.rpc.client import mount_capability
from tests.conformance.helpers import (
    SMALL,
    XFS_MIN,
    MiB,
    NodeSession,
    create,
    create_request,
    node_session,
)
from tests.conftest import RunningDriver
from tests.lifecycle import BLOCK, EXT4
from tests.pools import driver_on_own_pool

pytestmark = pytest.mark.integration

T = pb.VolumeHealthErrorType
S = pb.StorageHealthErrorType


def controller_health(driver, volume_id: str) -> list[pb.VolumeHealth.VolumeHealthEntry]:
    rsp = driver.client.controller.ControllerGetVolumeHealth(
        pb.ControllerGetVolumeHealthRequest(volume_id=volume_id), timeout=30)
    assert rsp.volume_health.volume_id == volume_id
    return list(rsp.volume_health.health_statuses)


def listed_health(driver, volume_id: str) -> list[pb.VolumeHealth.VolumeHealthEntry] | None:
    """The volume's entries in ControllerListVolumeHealth (paged one by one, to walk the
    tokens too), or None when it is not listed."""
    token, found = "", None
    while True:
        rsp = driver.client.controller.ControllerListVolumeHealth(
            pb.ControllerListVolumeHealthRequest(max_entries=1, starting_token=token),
            timeout=30)
        assert len(rsp.entries) <= 1
        for entry in rsp.entries:
            assert entry.health_statuses, "only volumes with a condition are listed"
            if entry.volume_id == volume_id:
                found = list(entry.health_statuses)
        if not rsp.next_token:
            return found
        token = rsp.next_token


def node_health(driver, volume_id: str, path: str = "",
                staging: str = "") -> list[pb.VolumeHealth.VolumeHealthEntry]:
    rsp = driver.client.node.NodeGetVolumeHealth(
        pb.NodeGetVolumeHealthRequest(volume_id=volume_id, volume_publish_path=path,
                                      staging_target_path=staging), timeout=30)
    assert rsp.volume_health.volume_id == volume_id
    return list(rsp.volume_health.health_statuses)


def storage_health(driver) -> list:
    return list(driver.client.node.NodeGetStorageHealth(
        pb.NodeGetStorageHealthRequest(), timeout=30).backend_health)


def assert_condition(entries, status: int, reason: str, *words: str) -> None:
    """`entries` hold exactly one entry of (status, reason), whose message names every
    one of `words`; (status, reason) pairs are unique, as the spec requires."""
    pairs = [(e.status, e.reason) for e in entries]
    assert len(pairs) == len(set(pairs)), f"repeated (status, reason): {pairs}"
    match = [e for e in entries if e.status == status and e.reason == reason]
    assert match, f"expected ({status}, {reason}) among {entries}"
    assert reason[0].isupper() and reason.isalnum(), f"reason is not CamelCase: {reason!r}"
    for word in words:
        assert word.lower() in match[0].message.lower(), \
            f"{reason} does not name {word!r}: {match[0].message!r}"


def assert_everywhere(driver, volume_id: str, status: int, reason: str, *words: str,
                      paths: tuple[str, ...] = ()) -> None:
    """Every health RPC that looks at this volume reports the condition: the
    controller's get and list, and the node's for each given path (and none)."""
    assert_condition(controller_health(driver, volume_id), status, reason, *words)
    listed = listed_health(driver, volume_id)
    assert listed is not None, f"{volume_id} is not listed by ControllerListVolumeHealth"
    assert_condition(listed, status, reason, *words)
    for path in ("", *paths):
        assert_condition(node_health(driver, volume_id, path), status, reason, *words)


def assert_healthy(driver, volume_id: str, *paths: str) -> None:
    assert controller_health(driver, volume_id) == []
    assert listed_health(driver, volume_id) is None
    for path in ("", *paths):
        assert node_health(driver, volume_id, path) == []


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


def test_healthy_volumes_report_no_condition(driver):
    idle = create(driver, "h-idle")
    assert_healthy(driver, idle.volume_id)
    with node_session(driver) as node:
        for name, cap in (("h-mount", EXT4), ("h-block", BLOCK)):
            vol = create(driver, name, caps=[cap])
            staging, target = publish(node, vol.volume_id, cap)
            assert_healthy(driver, vol.volume_id, target)
            assert node_health(driver, vol.volume_id, target, staging) == []
    assert storage_health(driver) == []


# --- the backing file: DATA_LOSS ---------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_missing_image_of_an_unstaged_volume(driver, how):
    vol = create(driver, "h-missing")
    path = image(driver, vol.volume_id)
    if how == "removed":
        os.remove(path)
    else:
        os.rename(path, path + ".moved")
    assert_everywhere(driver, vol.volume_id, T.DATA_LOSS, "ImageMissing", vol.volume_id,
                      path, "missing", "restored from a backup")
    if how == "renamed":
        os.rename(path + ".moved", path)  # put back: healthy again
        assert_healthy(driver, vol.volume_id)
    delete(driver, vol.volume_id)
    assert not os.path.exists(path)


def test_missing_image_of_a_staged_volume(driver):
    """The file is deleted while the volume is mounted: the loop device keeps the data
    alive, but the next reboot loses it. Every RPC says so; the volume still comes
    down cleanly (its device, whose backing file is "(deleted)", is detached)."""
    vol = create(driver, "h-gone")
    path = image(driver, vol.volume_id)
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        with open(os.path.join(target, "f"), "wb") as fh:
            fh.write(b"x" * MiB)
        os.remove(path)
        assert_everywhere(driver, vol.volume_id, T.DATA_LOSS, "ImageMissing",
                          vol.volume_id, path, "missing", paths=(target,))
    delete(driver, vol.volume_id)


@pytest.mark.parametrize("staged", [False, True], ids=["unstaged", "staged"])
def test_truncated_image(driver, staged):
    vol = create(driver, "h-short", caps=[EXT4, BLOCK])
    path = image(driver, vol.volume_id)
    words = (vol.volume_id, path, "truncated", str(SMALL // 2), str(SMALL), "lost")
    with node_session(driver) as node:
        paths: tuple[str, ...] = ()
        if staged:
            _, target = publish(node, vol.volume_id, BLOCK)
            paths = (target,)
        os.truncate(path, SMALL // 2)
        assert_everywhere(driver, vol.volume_id, T.DATA_LOSS, "ImageTruncated", *words,
                          paths=paths)
    delete(driver, vol.volume_id)


# --- the loop device: INACCESSIBLE, and its settings: DEGRADED ----------------------------


def test_loop_device_detached_behind_the_drivers_back(driver):
    """LOOP_CLR_FD on a staged, published block volume's device: pods get I/O errors.
    Every RPC reports it and says how to recover; the dead publish and the staging
    still come down, and staging again makes the volume healthy."""
    vol = create(driver, "h-detached", caps=[BLOCK])
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, BLOCK)
        device = loop_of(driver, vol.volume_id)
        real_host().loops.detach(device)
        assert real_host().loops.get(device) is None
        assert_everywhere(driver, vol.volume_id, T.INACCESSIBLE, "DeviceDetached",
                          vol.volume_id, "loop device", "detached", "NodeStageVolume",
                          paths=(target,))
        # Unpublish and unstage take the dead publish down (the session checks them).
        node.close()
        node.targets.clear()
        node.stagings.clear()
        assert not os.path.exists(target)
        assert_healthy(driver, vol.volume_id)
        # Staged again, it works again.
        staging, target = publish(node, vol.volume_id, BLOCK)
        assert_healthy(driver, vol.volume_id, target)


def test_publish_path_without_the_volume_is_inaccessible_there(driver):
    """The node RPC checks the publish path the CO names: a path where the volume is
    not mounted (a kubelet restart lost it) makes the volume INACCESSIBLE there."""
    vol = create(driver, "h-unpublished")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        elsewhere = driver.path("never-published")
        os.mkdir(elsewhere)
        assert_condition(node_health(driver, vol.volume_id, elsewhere), T.INACCESSIBLE,
                         "PublishPathNotMounted", vol.volume_id, elsewhere)
        assert node_health(driver, vol.volume_id, target) == []
        assert controller_health(driver, vol.volume_id) == []


def test_direct_io_and_read_ahead_turned_off_behind_the_drivers_back(driver):
    """A volume asks for direct I/O and a 512 KiB read-ahead; someone turns both off on
    its live device: DEGRADED DirectIOOff and ReadAheadOff, until it is modified
    again (ControllerModifyVolume puts the settings back)."""
    mutable = {"directIO": "true", "readAheadKiB": "512"}
    request = create_request("h-settings", caps=[BLOCK])
    request.mutable_parameters.update(mutable)
    vol = driver.client.controller.CreateVolume(request, timeout=60).volume
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, BLOCK)
        device = loop_of(driver, vol.volume_id)
        assert real_host().loops.get(device).direct_io  # type: ignore[union-attr]
        assert_healthy(driver, vol.volume_id, target)
        real_host().loops.set_direct_io(device, False)
        assert_everywhere(driver, vol.volume_id, T.DEGRADED, "DirectIOOff", vol.volume_id,
                          device, "direct I/O", paths=(target,))
        real_host().loops.set_read_ahead(device, 0)
        assert_everywhere(driver, vol.volume_id, T.DEGRADED, "ReadAheadOff", vol.volume_id,
                          device, "512 KiB", paths=(target,))
        driver.client.controller.ControllerModifyVolume(
            pb.ControllerModifyVolumeRequest(volume_id=vol.volume_id,
                                             mutable_parameters=mutable), timeout=30)
        assert_healthy(driver, vol.volume_id, target)


# --- the filesystem: DEGRADED -----------------------------------------------------------


def test_ext4_errors(driver):
    vol = create(driver, "h-fserr")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        assert_healthy(driver, vol.volume_id, target)
        name = os.path.basename(loop_of(driver, vol.volume_id))
        with open(f"/sys/fs/ext4/{name}/trigger_fs_error", "w") as fh:
            fh.write("1")
        # ext4 records an error in its superblock from a work item, a moment after
        # the error itself: wait (bounded) for the count to appear.
        deadline = time.monotonic() + 10
        while not controller_health(driver, vol.volume_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_everywhere(driver, vol.volume_id, T.DEGRADED, "FilesystemErrors",
                          vol.volume_id, "ext4", "error", "fsck", paths=(target,))


def test_xfs_shut_down(driver):
    """xfs shuts itself down on metadata corruption or I/O it cannot handle (here forced
    with xfs_io's shutdown command): DEGRADED FilesystemErrors everywhere, naming it."""
    cap = mount_capability("xfs")
    vol = create(driver, "h-xfs", size=XFS_MIN, caps=[cap])
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, cap)
        assert_healthy(driver, vol.volume_id, target)
        subprocess.run(["xfs_io", "-x", "-c", "shutdown", staging], check=True,
                       capture_output=True)
        assert_everywhere(driver, vol.volume_id, T.DEGRADED, "FilesystemErrors",
                          vol.volume_id, "xfs", "shut down", paths=(target,))


def test_staging_mount_gone_behind_the_drivers_back(driver):
    """Someone unmounts a staged volume's staging path (its device stays attached):
    INACCESSIBLE StagingNotMounted; the volume still comes down cleanly."""
    vol = create(driver, "h-unmounted")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        real_host().mounts.unmount(staging)
        assert_everywhere(driver, vol.volume_id, T.INACCESSIBLE, "StagingNotMounted",
                          vol.volume_id, staging, paths=(target,))


# --- the pool ---------------------------------------------------------------------------


POOL_FS_BYTES = 64 * MiB


@pytest.fixture
def small_pool_driver(workdir: str) -> Iterator[RunningDriver]:
    """A driver whose pool is a 64 MiB ext4 with 512 inodes, on a loop device."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and /dev/loop-control (real loop devices and mounts)")
    with driver_on_own_pool(workdir, "ext4", POOL_FS_BYTES, ("-N", "512"),
                            {"reserve_bytes": MiB, "thin_overcommit": 10.0}) as running:
        yield running


def assert_storage(entries, status: int, reason: str, *words: str) -> None:
    triples = [(e.status, e.reason, e.volume_capability.SerializeToString())
               for e in entries]
    assert len(triples) == len(set(triples)), f"repeated entries: {entries}"
    assert_condition(entries, status, reason, *words)


def test_thin_pool_out_of_space(small_pool_driver):
    """A thin volume promises space its pool no longer has: every volume RPC warns
    before writes start failing, NodeGetStorageHealth says the pool is near full, and
    both say what to do. Freed, all is well again."""
    driver = small_pool_driver
    vol = create(driver, "h-thin")
    filler = os.path.join(driver.pool, "filler")
    with node_session(driver) as node:
        staging, target = publish(node, vol.volume_id, EXT4)
        assert_healthy(driver, vol.volume_id, target)
        assert storage_health(driver) == []
        st = os.statvfs(driver.pool)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - 256 * 1024)
        finally:
            os.close(fd)
        assert_everywhere(driver, vol.volume_id, T.DEGRADED, "ThinPoolNearFull",
                          vol.volume_id, "thin", driver.pool, "free space in the pool",
                          paths=(target,))
        assert_storage(storage_health(driver), S.STORAGE_DEGRADED, "PoolNearFull",
                       driver.pool, "free space")
        os.remove(filler)
        assert_healthy(driver, vol.volume_id, target)
        assert storage_health(driver) == []
    delete(driver, vol.volume_id)


def test_pool_out_of_inodes(small_pool_driver):
    """The pool's filesystem (512 inodes) runs out of inodes: STORAGE_DEGRADED
    PoolInodesLow until the files are gone."""
    driver = small_pool_driver
    junk = os.path.join(driver.pool, "junk")
    os.mkdir(junk)
    made = 0
    try:
        while True:
            try:
                with open(os.path.join(junk, str(made)), "w"):
                    pass
            except OSError:
                break
            made += 1
        assert_storage(storage_health(driver), S.STORAGE_DEGRADED, "PoolInodesLow",
                       driver.pool, "inodes")
    finally:
        for i in range(made):
            os.remove(os.path.join(junk, str(i)))
        os.rmdir(junk)
    assert storage_health(driver) == []


def test_pool_filesystem_errors_and_read_only(small_pool_driver):
    """The pool's own ext4 (errors=remount-ro, as many hosts mount their disks) records
    an error and the kernel forces it read-only: NodeGetStorageHealth reports
    PoolFilesystemErrors naming the pool's device, and PoolReadOnly."""
    driver = small_pool_driver
    device = driver.pool_device  # type: ignore[attr-defined]
    subprocess.run(["mount", "-o", "remount,errors=remount-ro", driver.pool], check=True,
                   capture_output=True)
    name = os.path.basename(device)
    with open(f"/sys/fs/ext4/{name}/trigger_fs_error", "w") as fh:
        fh.write("1")
    deadline = time.monotonic() + 10
    while len(storage_health(driver)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    found = storage_health(driver)
    assert_storage(found, S.STORAGE_DEGRADED, "PoolFilesystemErrors", driver.pool, device,
                   "error")
    assert_storage(found, S.STORAGE_DEGRADED, "PoolReadOnly", driver.pool, "read-only")


def test_missing_pool_is_unreachable(driver):
    """The pool's directory is gone (a disk not mounted after a reboot): the node says
    STORAGE_UNREACHABLE PoolMissing."""
    volumes = os.path.join(driver.pool, "volumes")
    os.rename(volumes, volumes + ".away")
    try:
        assert_storage(storage_health(driver), S.STORAGE_UNREACHABLE, "PoolMissing",
                       driver.pool, "missing")
    finally:
        os.rename(volumes + ".away", volumes)
    assert storage_health(driver) == []

"""A driver restarted in a new mount namespace still knows its own loop devices.

A node plugin container reaches the pool through a bind mount that dies with the
container. The loop devices it attached outlive it, and once that mount is gone the
kernel shows each device's backing file only by its path below the mount's root
("/volumes/<id>.img"), not by the path the new container uses. The restarted driver
must still recognise them by identity: kubelet's NodeStage retry is OK (not
ALREADY_EXISTS because "another" device is mounted at the staging path), the data is
there, and unpublish, unstage and delete take everything down.

Here the container's mount is a bind mount of the pool at the same path, lazily
unmounted and bound again between the two runs of the driver.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from tests.conftest import needs_root
from tests.kernel_leaks import clean_under
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import DriverProcess, payload, read_digest, write_data

pytestmark = [pytest.mark.integration, needs_root()]

SIZE = 32 * MiB
KINDS = ("ext4", "block")


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def backing_file(device: str) -> str | None:
    """What sysfs shows as `device`'s backing file, or None when it is detached."""
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def test_restart_behind_a_new_bind_mount_finds_its_devices(workdir: str) -> None:
    real = os.path.join(workdir, "real")
    proc = DriverProcess(workdir)
    os.mkdir(real, 0o700)
    os.mkdir(proc.pool, 0o700)
    run("mount", "--bind", real, proc.pool)
    tails: dict[str, str] = {}  # device -> the tail the kernel shows for it
    try:
        proc.start()
        v = Volumes(proc.client)
        vols = {}
        for kind in KINDS:
            vid = v.create(f"restart-{kind}", kind, SIZE).volume_id
            staging, target = (os.path.join(workdir, f"{p}-{kind}") for p in ("s", "t"))
            os.mkdir(staging)
            ctx = v.attach(vid, kind)
            v.stage(vid, kind, staging, ctx)
            v.publish(vid, kind, staging, target)
            data = payload(kind)
            write_data(target, kind, data)
            vols[kind] = (vid, staging, target, ctx, hashlib.sha256(data).hexdigest())
        devices = {kind: _staged_device(proc.pool, vols[kind][0]) for kind in KINDS}
        proc.stop()

        # The old container's mount goes; the new container binds the pool again.
        run("umount", "-l", proc.pool)
        run("mount", "--bind", real, proc.pool)
        for kind, device in devices.items():
            shown = backing_file(device)
            image = os.path.join(proc.pool, "volumes", f"{vols[kind][0]}.img")
            # The premise of this test: the kernel no longer shows the path we use.
            assert shown is not None and shown != image and image.endswith(shown), \
                (device, shown, image)
            tails[device] = shown

        proc.start()
        assert "left attached" not in proc.log(), proc.log()
        v = Volumes(proc.client)
        for kind in KINDS:
            vid, staging, target, ctx, digest = vols[kind]
            # kubelet retries both after a plugin restart; both must be OK.
            v.stage(vid, kind, staging, ctx)
            v.publish(vid, kind, staging, target)
            assert _staged_device(proc.pool, vid) == devices[kind]
            assert read_digest(target, kind, len(payload(kind))) == digest
            condition = v.condition(vid)
            assert not condition.abnormal, condition.message
        for kind in KINDS:
            vid, staging, target, _, _ = vols[kind]
            v.unpublish(vid, target)
            v.unstage(vid, staging)
            assert backing_file(devices[kind]) != tails[devices[kind]], \
                f"{devices[kind]} of {vid} is still attached after NodeUnstageVolume"
            v.detach(vid)
            v.delete(vid)
        assert os.listdir(os.path.join(real, "volumes")) == []
    finally:
        proc.stop()
        clean_under(workdir)
        # Devices shown only by a tail escape the workdir-scoped cleanup: detach exactly
        # the ones this test attached, if they still hold the same file.
        for device, shown in tails.items():
            if backing_file(device) == shown:
                subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60)


def _staged_device(pool: str, volume_id: str) -> str:
    import sqlite3

    with sqlite3.connect(f"file:{pool}/catalog.db?mode=ro", uri=True) as db:
        row = db.execute("SELECT device FROM stagings WHERE volume_id = ?",
                         (volume_id,)).fetchone()
    assert row is not None and row[0], f"{volume_id} has no staged device in the catalog"
    return str(row[0])

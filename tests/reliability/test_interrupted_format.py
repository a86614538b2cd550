"""A format interrupted by killing the driver's whole process group (what a container
kill does) is redone at the next NodeStageVolume, for ext4, xfs and btrfs.

mkfs is replaced, for the first stage only, by a stand-in on the driver's PATH that
runs the real mkfs, then damages what it made past the superblock (a half-written
filesystem whose signature blkid still sees) and hangs; the test kills the process
group while it hangs. The driver restarts without the stand-in, and the retried stage
must make a new filesystem (a new UUID) rather than trust the signature.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conftest import NODE_ID, needs_root
from tests.lifecycle import MiB, Volumes, capability
from tests.reliability.harness import (
    KILLED,
    DriverProcess,
    disagreements,
    payload,
    read_digest,
    write_data,
)

pytestmark = [pytest.mark.integration, needs_root()]

SIZES = {"ext4": 32 * MiB, "xfs": 300 * MiB, "btrfs": 128 * MiB}


def uuid_of(image: str) -> str:
    result = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", image],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def stand_in(bindir: str, fs: str, marker: str) -> None:
    real = shutil.which(f"mkfs.{fs}", path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
    assert real, f"mkfs.{fs} is not installed"
    path = os.path.join(bindir, f"mkfs.{fs}")
    with open(path, "w") as fh:
        fh.write(f"""#!/bin/sh
# Test stand-in: the real mkfs, then the rest of its work "lost" (zeros from 128 KiB
# to 1 MiB, past every superblock), then a hang until the test kills the group.
"{real}" "$@" || exit $?
for dev; do :; done
dd if=/dev/zero of="$dev" bs=64K seek=2 count=14 conv=notrunc,fsync status=none
touch "{marker}"
exec sleep 600
""")
    os.chmod(path, stat.S_IRWXU)


@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_format_killed_with_its_process_group_is_redone(workdir, fs):
    d = DriverProcess(workdir, "--filesystems", "ext4,xfs,btrfs", new_session=True)
    bindir = os.path.join(workdir, "bin")
    os.mkdir(bindir)
    marker = os.path.join(workdir, "mkfs-ran")
    stand_in(bindir, fs, marker)
    d.env_extra = {"PATH": bindir + os.pathsep + os.environ["PATH"]}
    group = 0
    try:
        d.start()
        v = Volumes(d.client)
        vid = v.create(f"fmt-{fs}", fs, SIZES[fs]).volume_id
        image = os.path.join(d.pool, "volumes", vid + ".img")
        staging, target = os.path.join(workdir, "s"), os.path.join(workdir, "t")
        os.mkdir(staging)
        v.attach(vid, fs)
        call = d.client.node.NodeStageVolume.future(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=capability(fs),
            publish_context={"node": NODE_ID}), timeout=120)
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        assert d.proc is not None
        group = d.proc.pid
        os.killpg(group, signal.SIGKILL)
        assert d.wait_killed() == KILLED
        call.cancel()
        half_made = uuid_of(image)
        assert half_made, "the interrupted mkfs left no signature: nothing to prove"

        d.stop()
        d.env_extra = {}
        d.start()
        v = Volumes(d.client)
        v.stage(vid, fs, staging)
        assert uuid_of(image) not in ("", half_made), "the half-made filesystem was kept"
        v.publish(vid, fs, staging, target)
        digest = write_data(target, fs, payload(f"after-{fs}"))
        assert read_digest(target, fs, MiB) == digest
        with open(os.path.join(d.pool, "records", vid + ".json")) as fh:
            assert '"format": "formatted"' in fh.read()
        v.take_down(vid, staging, target)
        v.delete(vid)
        assert disagreements(workdir, d.pool, expect_empty=True) == []
    finally:
        if not group and d.proc is not None:
            group = d.proc.pid  # failed before the kill: the stand-in may still hang
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.stop()

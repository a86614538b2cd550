"""Loop devices are known by identity: no detach behind the driver's back and no new
stage ever lets one volume's target reach another volume's data.

Each round publishes a raw block volume A with its own pattern, detaches A's loop
device with `losetup -d` (what a person or another tool might do), then stages and
publishes a new volume B (and lets a foreign `losetup -f` take a free number too).
A's target must never show B's pattern, B never A's; A's health says its device was
detached; A's unpublish takes its stale mount down and leaves B and the foreign
device alone; B keeps working to the end.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import needs_root
from tests.kernel_leaks import loops_under, mounts_under
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import disagreements, payload, write_data

pytestmark = [pytest.mark.integration, needs_root()]

SIZE = 16 * MiB
ROUNDS = 3


def losetup(*args: str) -> str:
    return subprocess.run(["losetup", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def read_head(target: str, length: int = MiB) -> bytes:
    """What the target shows now: its first bytes, or b"" when the device node no
    longer reaches an attached device (ENXIO, or an empty device)."""
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError:
        return b""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, length, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)


def publish_with_data(driver, name: str) -> tuple[str, str, str, bytes, str]:
    """A block volume created, staged and published with a pattern of its own:
    (id, staging, target, pattern, loop device)."""
    v = Volumes(driver.client)
    vid = v.create(name, "block", SIZE).volume_id
    staging, target = driver.path(f"s-{name}"), driver.path(f"t-{name}")
    os.mkdir(staging)
    v.bring_up(vid, "block", staging, target)
    pattern = payload(f"volume-{name}")
    write_data(target, "block", pattern)
    return vid, staging, target, pattern, driver.server.driver.catalog.get_staging(vid).device


def test_external_detaches_and_new_stages_never_cross_volumes(driver):
    v = Volumes(driver.client)
    foreign_file = driver.path("foreign.img")
    with open(foreign_file, "wb") as fh:
        fh.write(payload("foreign", MiB))
        fh.truncate(SIZE)
    foreign: list[str] = []
    live: list[tuple[str, str, str, bytes]] = []  # (id, staging, target, pattern)
    try:
        for r in range(ROUNDS):
            a, a_stage, a_target, a_data, a_dev = publish_with_data(driver, f"a-{r}")

            losetup("-d", a_dev)  # behind the driver's back
            condition = v.condition(a)
            assert condition.abnormal and "detached" in condition.message, condition.message

            b, b_stage, b_target, b_data, b_dev = publish_with_data(driver, f"b-{r}")
            assert b_dev != a_dev, "A's number, still bound at A's target, went to B"
            # A foreign tool that ignores mounts may take A's number; A's target then
            # reaches that file, never a volume's data.
            foreign.append(losetup("-f", "--show", foreign_file))

            shown = read_head(a_target)
            assert shown != b_data, f"round {r}: A's target shows B's data"
            assert all(shown != pattern for *_, pattern in live), "A shows an older volume"
            assert read_head(b_target) == b_data
            for _, _, target, pattern in live:
                assert read_head(target) == pattern

            # A's unpublish takes down its stale mount, whatever now holds the number.
            v.unpublish(a, a_target)
            assert mounts_under(a_target) == [] and not os.path.exists(a_target)
            assert read_head(b_target) == b_data
            assert all(os.path.exists(f"/sys/block/{os.path.basename(d)}/loop")
                       for d in foreign), "the driver detached a foreign device"
            v.unstage(a, a_stage)
            v.detach(a)
            v.delete(a)
            live.append((b, b_stage, b_target, b_data))
        for vid, _, target, pattern in live:
            assert read_head(target) == pattern
            assert not v.condition(vid).abnormal
    finally:
        for vid, stage, target, _ in live:
            v.take_down(vid, stage, target)
            v.delete(vid)
        for dev in foreign:
            losetup("-d", dev)
    assert loops_under(driver.workdir) == []
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []


def test_a_mounted_volume_whose_device_was_detached_is_reported_abnormal(driver):
    v = Volumes(driver.client)
    vid = v.create("mounted", "ext4", 32 * MiB).volume_id
    stage, target = driver.path("s"), driver.path("t")
    os.mkdir(stage)
    v.bring_up(vid, "ext4", stage, target)
    assert not v.condition(vid).abnormal
    losetup("-d", driver.server.driver.catalog.get_staging(vid).device)
    condition = v.condition(vid)
    assert condition.abnormal and "detached while in use" in condition.message, \
        condition.message
    v.take_down(vid, stage, target)
    v.delete(vid)
    assert loops_under(driver.workdir) == []

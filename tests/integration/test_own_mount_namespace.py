"""hack/test runs the suite in a mount namespace of its own: a copy of the machine's
mount table taken outside it while a test has a volume mounted (a container build with
chroot isolation, an unshare, a container that bind-mounts /) must not pin the test's
filesystem and loop device. CI failed this way once, beside the cluster's image builds:
unmount and detach of test volumes answered "still open by another process"."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from csi_py.linux import real_host
from tests.conftest import needs_root
from tests.lifecycle import MiB

# Set by hack/test to its own shell, which stays in the machine's mount namespace.
OUTER = os.environ.get("CSI_PY_TEST_OUTER_PID")

pytestmark = [
    needs_root(),
    pytest.mark.skipif(OUTER is None, reason="hack/test gives the suite its own mount "
                       "namespace; plain pytest runs in the machine's"),
]


def _namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


@contextmanager
def outer_mount_table_copied() -> Iterator[int]:
    """A process holding a private copy of the machine's mount table, taken from
    outside the suite's namespace now (what buildah's chroot isolation does for each
    RUN step); killed on exit. Yields its pid."""
    proc = subprocess.Popen(
        ["nsenter", f"--mount=/proc/{OUTER}/ns/mnt", "--",
         "unshare", "--mount", "--propagation", "private", "--", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while _comm(proc.pid) != "sleep":  # nsenter and unshare exec into it
            assert proc.poll() is None, f"nsenter/unshare exited {proc.returncode}"
            assert time.monotonic() < deadline, "the copying process did not start"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def test_the_suite_has_a_mount_namespace_of_its_own():
    assert _namespace("self") != _namespace(OUTER)


def test_a_copy_of_the_outer_mount_table_does_not_pin_a_test_volume(workdir):
    host = real_host()
    image = os.path.join(workdir, "vol.img")
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    target = os.path.join(workdir, "mnt")
    os.mkdir(target)
    device = host.loops.attach(image)
    try:
        host.fs.format(device.path, "ext4")
        host.mounts.mount(device.path, target, "ext4")
        with outer_mount_table_copied() as pid:
            with open(f"/proc/{pid}/mountinfo") as f:
                assert target not in f.read()
            host.mounts.unmount(target)
            # Raises DeviceBusy ("still open by another process") when a copy pins it.
            host.loops.detach(device.path)
            now = host.loops.get(device.path)
            assert now is None or now.backing_file != image
    finally:
        if host.mounts.is_mounted(target):
            host.mounts.unmount(target)
        host.loops.detach(device.path)

"""Fixtures for integration tests that use real loop devices and mounts.

Every test gets a leak check scoped strictly to its own tmp_path: other test runs
share this machine, so nothing outside the test's directory is ever looked at or
touched. The check deliberately uses util-linux (umount, losetup) and its own tiny
parsers rather than csi_py.linux, so a bug in the code under test cannot hide a
leak or break the cleanup.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_leaks import entries_under
from tests.lifecycle import MiB
from tests.scratch import Scratch

HERE = Path(__file__).parent
HAVE_KERNEL = os.geteuid() == 0 and os.path.exists("/dev/loop-control")
SKIP_REASON = "needs root and /dev/loop-control (real loop devices and mounts)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's tests marked ``integration`` where the kernel parts
    are not usable (not root, or no loop device support)."""
    if HAVE_KERNEL:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        # This hook sees the whole session; only touch this directory's tests.
        if item.path.is_relative_to(HERE) and item.get_closest_marker("integration"):
            item.add_marker(skip)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """A fresh, empty pool directory inside the test's tmp_path."""
    path = tmp_path / "pool"
    path.mkdir()
    return path


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_mounts(root: str) -> list[str]:
    """Mount points at or under ``root``, deepest (and most recent) first."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [_unescape(line.split(" ")[4]) for line in f if line.strip()]
    mine = [p for p in points if p == root or p.startswith(root + "/")]
    # Later entries are on top; reverse, then a stable sort by depth keeps that.
    mine.reverse()
    mine.sort(key=lambda p: -p.count("/"))
    return mine


def _own_loops(root: str) -> list[tuple[str, str]]:
    """(device, backing file) of loop devices whose backing file is under ``root``."""
    found = []
    for name in sorted(os.listdir("/sys/block")):
        if not re.fullmatch(r"loop\d+", name):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8",
                      errors="surrogateescape") as f:  # fmt: skip
                backing = f.read().removesuffix("\n").removesuffix(" (deleted)")
        except OSError:
            continue
        real = os.path.realpath(backing)
        if real == root or real.startswith(root + "/"):
            found.append((f"/dev/{name}", backing))
    return found


def _clean(root: str) -> list[str]:
    """Unmount and detach everything of ``root``; returns what was found."""
    leaked: list[str] = []
    for _ in range(10):  # stacked mounts need one umount each
        points = _own_mounts(root)
        if not points:
            break
        for point in points:
            leaked.append(f"mount {point}")
            rc = subprocess.run(["umount", point], capture_output=True).returncode
            if rc != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
    for device, backing in _own_loops(root):
        leaked.append(f"loop {device} -> {backing}")
        subprocess.run(["losetup", "-d", device], capture_output=True)
    return leaked


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After each test: find loop devices backed by files under this test's
    tmp_path and mounts under it, clean them up (deepest mount first, then the
    devices) and fail the test if there were any."""
    yield
    if not HAVE_KERNEL:
        return
    root = os.path.realpath(tmp_path)
    leaked = _clean(root)
    if leaked:
        pytest.fail("test leaked kernel state (now cleaned up): " + "; ".join(leaked))


class Kit(Scratch):
    """The real Linux services plus helpers that create images, devices and
    directories inside one test's tmp dir, and undo everything at the end (also
    when the test fails). Its cleanup uses csi_py.linux itself; the autouse leak
    check above then verifies independently that nothing is left."""

    def __init__(self, root: Path):
        from csi_py.linux import real_host

        host = real_host()
        self.root = root
        self.loops = host.loops
        self.mounts = host.mounts
        self.fs = host.fs

    def device(self, size: int = 64 * MiB, name: str | None = None, **attach_kw: object):
        """A fresh image attached to a loop device (returns the LoopDevice)."""
        image = self.image(name or f"img{len(os.listdir(self.root))}.img", size)
        return self.loops.attach(image, **attach_kw)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        root = os.path.realpath(self.root)
        for _ in range(10):
            entries = entries_under(self.mounts, root)
            if not entries:
                break
            for entry in entries:
                try:
                    self.mounts.unmount(entry.mount_point)
                except Exception:
                    subprocess.run(["umount", "-l", entry.mount_point], capture_output=True)
        for dev in self.loops.list_attached():
            real = os.path.realpath(dev.backing_file)
            if real.startswith(root + "/"):
                try:
                    self.loops.detach(dev.path)
                except Exception:
                    pass


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    """Real Linux services working inside this test's tmp dir."""
    k = Kit(tmp_path)
    try:
        yield k
    finally:
        k.cleanup()

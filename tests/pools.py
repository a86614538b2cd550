"""A driver whose pool is its own small filesystem: an image in the test's workdir, on a
loop device, formatted and mounted at the pool path before the driver starts, and
unmounted and detached after it stops (also when the test fails)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from csi_py.linux import real_host
from tests.conftest import RunningDriver, _start

MKFS = {
    "ext4": ("mkfs.ext4", "-q", "-F", "-m", "0"),
    "xfs": ("mkfs.xfs", "-q", "-f", "-m", "reflink=1"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}


@contextmanager
def driver_on_own_pool(workdir: str, fs_type: str, size_bytes: int,
                       mkfs_args: tuple[str, ...] = (),
                       options: dict | None = None) -> Iterator[RunningDriver]:
    """Yield a running driver on a fresh `fs_type` pool of `size_bytes`; the pool's loop
    device is the driver's `pool_device` attribute."""
    host = real_host()
    backing = os.path.join(workdir, f"pool-{fs_type}.img")
    with open(backing, "wb") as fh:
        fh.truncate(size_bytes)
    subprocess.run([*MKFS[fs_type], *mkfs_args, backing], check=True, capture_output=True)
    pool = os.path.join(workdir, "pool")
    os.mkdir(pool, 0o700)
    device = host.loops.attach(backing)
    try:
        host.mounts.mount(device.path, pool, fs_type, ["nosuid", "nodev"])
        try:
            os.chmod(pool, 0o700)
            opts = dict(options or {})
            server, client = _start(workdir, opts)
            running = RunningDriver(workdir, f"{workdir}/csi.sock", pool, server, client, opts)
            running.pool_device = device.path  # type: ignore[attr-defined]
            try:
                yield running
            finally:
                running.stop()
        finally:
            host.mounts.unmount(pool)
    finally:
        host.loops.detach(device.path)

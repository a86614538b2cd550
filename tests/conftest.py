"""Shared fixtures: a real csi-py server on a private temporary pool, with a leak check
that fails the test if any loop device or mount of that pool is left behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from csi_py.linux.filesystems.base import CAP_SYS_RESOURCE, has_capability
from tests.kernel_leaks import clean_under, leaks_under

NODE_ID = "test-node"


def has_cap_sys_resource() -> bool:
    """Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE in its effective
    set), asked the way the driver asks it, so a test expects what the driver decides."""
    return has_capability("CapEff", CAP_SYS_RESOURCE)


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
        reason="needs root and /dev/loop-control (real loop devices and mounts)",
    )


@dataclass
class RunningDriver:
    """A driver serving on a socket in `workdir`; `restart()` simulates a process restart."""

    workdir: str
    socket: str
    pool: str
    server: object
    client: object
    options: dict

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def stop(self) -> None:
        self.client.close()  # type: ignore[attr-defined]
        self.server.stop(grace=5)  # type: ignore[attr-defined]

    def restart(self) -> None:
        """Stop the server (kernel state stays), start a new one on the same pool."""
        self.stop()
        self.server, self.client = _start(self.workdir, self.options)


def _start(workdir: str, options: dict) -> tuple[object, object]:
    from csi_py.config import Config
    from csi_py.core.driver import Driver
    from csi_py.linux import real_host
    from csi_py.rpc.client import Client
    from csi_py.server import Server

    config = Config(
        endpoint=f"unix://{workdir}/csi.sock", node_id=NODE_ID, pool=f"{workdir}/pool",
        **options,
    ).validated()
    server = Server(Driver(config, real_host()))
    server.start()
    client = Client(config.socket_path)
    client.wait_ready(10)
    return server, client


# Files at least this big are volume or snapshot images; smaller ones (catalogs, logs) stay
# in a failed test's tmp_path to help debugging.
_IMAGE_BYTES = 1 << 20


def remove_images(root: str) -> list[str]:
    """Delete the regular files of at least 1 MiB (apparent size) under root; return their
    paths. Idempotent; never follows symlinks out of root."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_size >= _IMAGE_BYTES:
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                continue
    return removed


@pytest.fixture(autouse=True)
def drop_images(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remove the images a test made under its tmp_path once it is over, so a run leaves
    no gigabytes under /tmp/pytest-of-*. Set up first, so its teardown runs after every
    other fixture's (leak checks see the kernel objects before their files go)."""
    root = str(request.getfixturevalue("tmp_path")) if "tmp_path" in request.fixturenames else ""
    yield
    if root:
        remove_images(root)


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short private directory (unix socket paths must stay under 108 bytes), checked
    for leaked loop devices and mounts when the test ends."""
    path = tempfile.mkdtemp(prefix="csipy-t-")
    os.chmod(path, 0o700)
    yield path
    leaks = leaks_under(path)
    clean_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if leaks:
        pytest.fail(f"test left kernel objects behind: {leaks}")


@pytest.fixture
def driver_options() -> dict:
    """Override in a module to pass Config fields to the `driver` fixture."""
    return {}


@pytest.fixture
def driver(workdir: str, driver_options: dict) -> Iterator[RunningDriver]:
    """A real csi-py server (real loop devices and mounts) on a private pool."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and /dev/loop-control (real loop devices and mounts)")
    server, client = _start(workdir, driver_options)
    running = RunningDriver(workdir, f"{workdir}/csi.sock", f"{workdir}/pool", server, client,
                            driver_options)
    yield running
    running.stop()

"""Structural types of the Linux services, so the core can be given the real ones
(:func:`csi_py.linux.real_host`) or the in-memory fakes of tests/fakes.py alike.

The method docs live on the real implementations in loop.py, mount.py and fs.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from csi_py.linux.fs import FsStats
from csi_py.linux.loop import LoopDevice
from csi_py.linux.mount import MountEntry


@runtime_checkable
class LoopService(Protocol):
    def attach(
        self,
        backing_file: str,
        *,
        direct_io: bool = True,
        read_only: bool = False,
        block_size: int | None = None,
    ) -> LoopDevice: ...
    def detach(self, device_path: str) -> None: ...
    def list_attached(self) -> list[LoopDevice]: ...
    def find_by_backing_file(self, backing_file: str) -> list[LoopDevice]: ...
    def get(self, device_path: str) -> LoopDevice | None: ...
    def refresh_capacity(self, device_path: str) -> None: ...
    def set_direct_io(self, device_path: str, enabled: bool) -> None: ...


@runtime_checkable
class MountService(Protocol):
    def list_mounts(self) -> list[MountEntry]: ...
    def mounts_at(self, path: str) -> list[MountEntry]: ...
    def mounts_under(self, path: str) -> list[MountEntry]: ...
    def is_mounted(self, path: str) -> bool: ...
    def mount(
        self,
        source: str,
        target: str,
        fs_type: str,
        options: Sequence[str] = (),
        *,
        read_only: bool = False,
    ) -> None: ...
    def bind_mount(
        self,
        source: str,
        target: str,
        *,
        read_only: bool = False,
        extra_flags: Sequence[str] = (),
    ) -> None: ...
    def unmount(self, target: str) -> None: ...


@runtime_checkable
class FilesystemService(Protocol):
    def detect(self, device: str) -> str | None: ...
    def format(self, device: str, fs_type: str, *, label: str | None = None) -> None: ...
    def statfs(self, path: str) -> FsStats: ...
    def grow(self, device: str, mount_point: str | None, fs_type: str) -> None: ...
    def missing_tools(self) -> list[str]: ...
    def block_device_size(self, device: str) -> int: ...

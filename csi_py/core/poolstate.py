"""The pool's state, as health, GetCapacity and the operator see it: ok, full (its
free space is down to the reserve kept for teardown), or failed (its filesystem
answers I/O errors or went read-only, e.g. after an error or EXT4_IOC_SHUTDOWN)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from csi_py.core.pool import Pool
from csi_py.linux import files
from csi_py.linux.errors import errno_text


class PoolCondition(enum.Enum):
    """Which of the three states the pool is in (see the module's statement)."""

    OK = "ok"
    FULL = "full"
    FAILED = "failed"


@dataclass(frozen=True)
class PoolState:
    """One probe's result: the condition, the free bytes it saw (0 when failed) and a
    message for the operator that says what to do."""

    condition: PoolCondition
    free_bytes: int
    message: str

    @property
    def failed(self) -> bool:
        return self.condition is PoolCondition.FAILED


def pool_state(pool: Pool, reserve_bytes: int, *, probe: bool = True) -> PoolState:
    """Probe the pool now: one fsync of an unchanged directory (not when `probe` is
    False: that fsync costs a disk cache flush) and one statvfs. Read-only (writes
    nothing); never raises."""
    err = files.probe_filesystem(pool.volumes_dir, sync=probe)
    if not err:
        try:
            _, free = files.space(pool.volumes_dir)
        except OSError as exc:
            err, free = exc.errno or 0, 0
    if err:
        return PoolState(PoolCondition.FAILED, 0, (
            f"the pool {pool.root} has failed: its filesystem answers {errno_text(err)};"
            " volumes' data cannot be read or written. Unpublish and unstage them (that"
            " still works), repair the pool's filesystem (unmount, fsck, mount) and"
            " restart csi-py"))
    if free <= reserve_bytes:
        return PoolState(PoolCondition.FULL, free, (
            f"the pool {pool.root} is full: {free} bytes free, at or below the"
            f" {reserve_bytes} bytes kept back; thin volumes' writes may fail. Delete"
            " volumes or snapshots, or grow the pool"))
    return PoolState(PoolCondition.OK, free, f"the pool {pool.root} is healthy")

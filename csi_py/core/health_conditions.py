"""Typed health (CSI v1.13): each problem of a volume or of the pool as a condition with
a type (DEGRADED, INACCESSIBLE, DATA_LOSS; or STORAGE_DEGRADED, STORAGE_UNREACHABLE for
the pool), a CamelCase reason and a message for people, all from real signals.

The per-volume signals come from core/health.py's probes (the backing file, the loop
device, the filesystem, the thin pool), so one place reads the kernel for both this
typed view and anything else that asks; this module classifies what they find and adds
what only it checks (a live device's read-ahead and direct I/O against what the volume
asked for). Everything here is read-only and idempotent: an unhealthy volume is
described, never an error.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass

from csi_py.core.health import THIN_LOW_WATER, HealthChecker
from csi_py.core.mutable import READ_AHEAD_KIB, direct_io_wanted
from csi_py.core.paging import MAX_PAGE, page_limit
from csi_py.core.volumes import Volumes
from csi_py.domain.errors import InvalidArgument
from csi_py.domain.model import StagingState, Volume
from csi_py.linux import files
from csi_py.linux.errors import LinuxError
from csi_py.linux.interfaces import LoopDevice
from csi_py.linux.pool_state import pool_fs_state

# A pool is short of inodes below this fraction free (and it has a fixed inode count).
INODE_LOW_WATER = 0.02


class VolumeHealthType(enum.Enum):
    DEGRADED = "DEGRADED"
    INACCESSIBLE = "INACCESSIBLE"
    DATA_LOSS = "DATA_LOSS"


class StorageHealthType(enum.Enum):
    STORAGE_DEGRADED = "STORAGE_DEGRADED"
    STORAGE_UNREACHABLE = "STORAGE_UNREACHABLE"


@dataclass(frozen=True)
class HealthCondition:
    """One problem of one volume. (type, reason) is unique per volume."""

    type: VolumeHealthType
    reason: str
    message: str


@dataclass(frozen=True)
class StorageCondition:
    """One problem of the pool (it affects all the pool's volumes)."""

    type: StorageHealthType
    reason: str
    message: str


# Reasons, CamelCase as the spec asks; tests and metrics use these names.
IMAGE_MISSING = "ImageMissing"
IMAGE_TRUNCATED = "ImageTruncated"
DEVICE_DETACHED = "DeviceDetached"
STAGING_NOT_MOUNTED = "StagingNotMounted"
PUBLISH_PATH_NOT_MOUNTED = "PublishPathNotMounted"
FILESYSTEM_ERRORS = "FilesystemErrors"
THIN_POOL_NEAR_FULL = "ThinPoolNearFull"
READ_AHEAD_OFF = "ReadAheadOff"
DIRECT_IO_OFF = "DirectIOOff"
HEALTH_CHECK_FAILED = "HealthCheckFailed"
VOLUME_ABNORMAL = "VolumeAbnormal"
POOL_FAILED = "PoolFailed"
POOL_MISSING = "PoolMissing"
POOL_IO_ERROR = "PoolIOError"
POOL_READ_ONLY = "PoolReadOnly"
POOL_FILESYSTEM_ERRORS = "PoolFilesystemErrors"
POOL_NEAR_FULL = "PoolNearFull"
POOL_INODES_LOW = "PoolInodesLow"


@dataclass(frozen=True)
class HealthPage:
    entries: tuple[tuple[Volume, tuple[HealthCondition, ...]], ...]
    next_token: str


class HealthReporter:
    """Conditions of volumes and of the pool, over the legacy probes and the host."""

    def __init__(self, checker: HealthChecker, volumes: Volumes) -> None:
        self.checker = checker
        self.volumes = volumes

    # --- one volume ----------------------------------------------------------------------

    def volume_conditions(self, volume: Volume) -> tuple[HealthCondition, ...]:
        """Every known problem of ``volume``, most serious first. Never raises for an
        unhealthy volume; a probe that cannot read its signal reports that as DEGRADED
        HealthCheckFailed rather than hiding it."""
        found: list[HealthCondition] = []
        c = self.checker
        path = c.pool.image_path(volume.id)
        # The probes of core/health.py are the signals; each is classified here.
        message = c._pool_failed(volume)
        if message is not None:
            # The pool's filesystem shut down or went read-only: the image cannot be read
            # or written, whatever its own state, and nothing else can be checked reliably.
            return (HealthCondition(VolumeHealthType.INACCESSIBLE, POOL_FAILED, message),)
        message = c._backing_file(volume)
        if message is not None:
            reason = IMAGE_MISSING if not files.exists(path) else IMAGE_TRUNCATED
            found.append(HealthCondition(VolumeHealthType.DATA_LOSS, reason, message))
        message = c._loop_device(volume)
        if message is not None:
            attached = c.view(volume.id, c.catalog.get_staging(volume.id)).devices
            reason = DEVICE_DETACHED if not attached else STAGING_NOT_MOUNTED
            found.append(HealthCondition(VolumeHealthType.INACCESSIBLE, reason, message))
        message = c._filesystem(volume)
        if message is not None:
            reason = HEALTH_CHECK_FAILED if "cannot read" in message else FILESYSTEM_ERRORS
            found.append(HealthCondition(VolumeHealthType.DEGRADED, reason, message))
        message = c._thin_pool(volume)
        if message is not None:
            found.append(HealthCondition(VolumeHealthType.DEGRADED, THIN_POOL_NEAR_FULL, message))
        found.extend(self._device_settings(volume))
        # Anything a probe added to core/health.py later and not classified above still
        # shows, as DEGRADED, instead of being lost.
        legacy = c.check(volume)
        if legacy.abnormal and legacy.message not in {f.message for f in found}:
            found.append(HealthCondition(VolumeHealthType.DEGRADED, VOLUME_ABNORMAL,
                                         legacy.message))
        return tuple(found)

    def _staged_device(self, volume: Volume) -> LoopDevice | None:
        record = self.checker.catalog.get_staging(volume.id)
        if record is None or record.state is not StagingState.STAGED:
            return None
        devices = self.checker.view(volume.id, record).devices
        for dev in devices:
            if dev.path == record.device:
                return dev
        return devices[0] if devices else None

    def _device_settings(self, volume: Volume) -> list[HealthCondition]:
        """Read-ahead or direct I/O off on the live device although the volume asks for
        them (its mutable parameters, or the driver's --direct-io default)."""
        device = self._staged_device(volume)
        if device is None:
            return []
        found = []
        wanted = volume.mutable_parameter_map
        if direct_io_wanted(wanted, self.checker.config.direct_io) and not device.direct_io:
            found.append(HealthCondition(
                VolumeHealthType.DEGRADED, DIRECT_IO_OFF,
                f"volume {volume.id}: direct I/O is off on {device.path} although the volume"
                " asks for it, so its data is cached twice (in the volume's filesystem and"
                " in the pool's); restage the volume or apply its VolumeAttributesClass"
                " again"))
        asked = int(wanted.get(READ_AHEAD_KIB, "0") or 0)
        if asked:
            try:
                actual = self.checker.host.loops.get_read_ahead(device.path)
            except LinuxError:
                actual = None
            if actual is not None and actual < asked:
                found.append(HealthCondition(
                    VolumeHealthType.DEGRADED, READ_AHEAD_OFF,
                    f"volume {volume.id}: read-ahead on {device.path} is {actual} KiB, not"
                    f" the {asked} KiB its {READ_AHEAD_KIB} asks for, so sequential reads"
                    " are slower; apply its VolumeAttributesClass again"))
        return found

    def node_volume_conditions(self, volume: Volume, publish_path: str,
                               staging_path: str) -> tuple[HealthCondition, ...]:
        """The volume's conditions as its node sees them; a publish path the CO names
        and that holds no mount makes the volume INACCESSIBLE there. Raises
        InvalidArgument for a relative path."""
        for path, field in ((publish_path, "volume_publish_path"),
                            (staging_path, "staging_target_path")):
            if path and not os.path.isabs(path):
                raise InvalidArgument(f"{field} {path!r} must be an absolute path")
        found = list(self.volume_conditions(volume))
        if publish_path and not self.checker.host.mounts.is_mounted(publish_path):
            found.append(HealthCondition(
                VolumeHealthType.INACCESSIBLE, PUBLISH_PATH_NOT_MOUNTED,
                f"volume {volume.id} is not mounted at {publish_path}: the workload using"
                " that path does not see the volume; restart it (kubelet publishes again)"))
        return tuple(found)

    # --- ControllerListVolumeHealth -------------------------------------------------------

    def list_page(self, max_entries: int, starting_token: str) -> HealthPage:
        """A page of the volumes that have at least one condition, in creation order.

        Tokens are ListVolumes' tokens (the seq of the last volume returned), so they
        stay valid while volumes come and go. Raises InvalidArgument (negative
        max_entries), Aborted (a token this driver never issued).
        """
        limit = page_limit(max_entries)
        found: list[tuple[Volume, tuple[HealthCondition, ...]]] = []
        token = starting_token
        while True:
            listing = self.volumes.list_volumes(MAX_PAGE, token)  # checks the token
            for vol, _nodes in listing.volumes:
                conditions = self.volume_conditions(vol)
                if not conditions:
                    continue
                if len(found) == limit:
                    return HealthPage(tuple(found), str(found[-1][0].seq))
                found.append((vol, conditions))
            if not listing.next_token:
                return HealthPage(tuple(found), "")
            token = listing.next_token

    # --- the pool ------------------------------------------------------------------------

    def storage_conditions(self) -> tuple[StorageCondition, ...]:
        """Problems of the pool as a whole: gone or failing, read-only, errors recorded
        by its filesystem, near full, out of inodes. Never raises."""
        pool = self.checker.pool
        config = self.checker.config
        try:
            state = pool_fs_state(pool.volumes_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return (StorageCondition(
                    StorageHealthType.STORAGE_UNREACHABLE, POOL_MISSING,
                    f"the pool {pool.root} is missing ({pool.volumes_dir}: {exc.strerror});"
                    " mount or restore it, then restart csi-py"),)
            return (StorageCondition(
                StorageHealthType.STORAGE_UNREACHABLE, POOL_IO_ERROR,
                f"the pool {pool.root} cannot be read: {exc.strerror or exc}; check the"
                " disk and the pool's filesystem"),)
        found = []
        where = f"the pool {pool.root}" + (
            f" ({state.fs_type} on {state.source}, mounted at {state.mount_point})"
            if state.mount_point else "")
        if state.read_only:
            found.append(StorageCondition(
                StorageHealthType.STORAGE_DEGRADED, POOL_READ_ONLY,
                f"{where} is read-only: no volume can be created, grown or written;"
                " remount it read-write (after fsck if it was forced read-only)"))
        if state.errors:
            found.append(StorageCondition(
                StorageHealthType.STORAGE_DEGRADED, POOL_FILESYSTEM_ERRORS,
                f"{where}: its filesystem reports errors ({state.errors})"))
        low_water = max(state.total_bytes * THIN_LOW_WATER, config.reserve_bytes)
        if state.free_bytes < low_water:
            found.append(StorageCondition(
                StorageHealthType.STORAGE_DEGRADED, POOL_NEAR_FULL,
                f"{where} has {state.free_bytes} of {state.total_bytes} bytes free, less"
                f" than {int(low_water)}: new volumes and snapshots fail and thin volumes'"
                " writes may fail; free space in the pool"))
        if state.total_inodes and state.free_inodes < state.total_inodes * INODE_LOW_WATER:
            found.append(StorageCondition(
                StorageHealthType.STORAGE_DEGRADED, POOL_INODES_LOW,
                f"{where} has {state.free_inodes} of {state.total_inodes} inodes free: new"
                " volumes and snapshots will fail; remove files from the pool's filesystem"))
        return tuple(found)

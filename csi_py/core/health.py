"""Volume health: the conditions a person must act on, as ControllerGetVolume and
NodeGetVolumeStats report them (VOLUME_CONDITION). Read-only; never raises for an
unhealthy volume, it describes it."""

from __future__ import annotations

from dataclasses import dataclass

from csi_py.config import Config
from csi_py.core.identity import device_problem
from csi_py.core.pool import Pool
from csi_py.core.poolstate import pool_state
from csi_py.domain.model import AccessType, Provisioning, Staging, Volume
from csi_py.linux import Host, files
from csi_py.linux.errors import LinuxError
from csi_py.linux.volume_view import VolumeKernel, VolumeView
from csi_py.state.catalog import Catalog

# A thin volume is at risk when the pool has less than this fraction of its size free.
THIN_LOW_WATER = 0.02


@dataclass(frozen=True)
class Condition:
    abnormal: bool
    message: str


HEALTHY = Condition(False, "volume is healthy")


class HealthChecker:
    def __init__(self, config: Config, catalog: Catalog, pool: Pool, host: Host,
                 kernel: VolumeKernel | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.host = host
        # The node's, when given: it knows the read-only extra devices this process made.
        self.kernel = kernel or VolumeKernel(host.loops, host.mounts)

    def view(self, volume_id: str, record: Staging | None) -> VolumeView:
        """The kernel's view of a volume from its staging record (see NodeBase.view):
        no scan of every loop device while the recorded device checks out."""
        recorded = record.device if record is not None else ""
        return self.kernel.view(self.pool.image_path(volume_id), recorded, scan=not recorded)

    def check(self, volume: Volume) -> Condition:
        """The first abnormal condition found, most serious first, or HEALTHY."""
        for probe in (self._pool_failed, self._backing_file, self._loop_device,
                      self._filesystem, self._thin_pool):
            found = probe(volume)
            if found is not None:
                return Condition(True, found)
        return HEALTHY

    def _pool_failed(self, volume: Volume) -> str | None:
        state = pool_state(self.pool, self.config.reserve_bytes)
        return f"volume {volume.id}: {state.message}" if state.failed else None

    def _backing_file(self, volume: Volume) -> str | None:
        path = self.pool.image_path(volume.id)
        try:
            size = files.file_size(path)
        except FileNotFoundError:
            return (f"volume {volume.id}: its backing file {path} is missing; the data is"
                    " gone unless the file is restored from a backup")
        if size < volume.capacity_bytes:
            return (f"volume {volume.id}: its backing file {path} is truncated to {size} of"
                    f" {volume.capacity_bytes} bytes; data past that point is lost")
        return None

    def _loop_device(self, volume: Volume) -> str | None:
        record = self.catalog.get_staging(volume.id)
        if record is None or not record.staged:
            return None
        view = self.view(volume.id, record)
        problem = device_problem(view, record, self.host.loops)
        if problem:
            return problem
        if record.access_type is AccessType.MOUNT and not view.stack(record.staging_path):
            return (f"volume {volume.id} is staged but nothing is mounted at"
                    f" {record.staging_path}")
        return None

    def _filesystem(self, volume: Volume) -> str | None:
        record = self.catalog.get_staging(volume.id)
        if record is None or record.access_type is not AccessType.MOUNT or not record.fs_type:
            return None
        devices = self.view(volume.id, record).devices
        if not devices:
            return None
        try:
            problem = self.host.fs.errors(devices[0].path, record.staging_path, record.fs_type)
        except LinuxError as exc:
            return f"volume {volume.id}: cannot read its filesystem's error state: {exc}"
        if problem:
            return (f"volume {volume.id}: the {record.fs_type} filesystem on"
                    f" {devices[0].path} reports errors ({problem}); unmount it and run fsck")
        return None

    def _thin_pool(self, volume: Volume) -> str | None:
        if volume.provisioning is not Provisioning.THIN:
            return None
        path = self.pool.image_path(volume.id)
        try:
            allocated = files.allocated_bytes(path)
        except OSError:
            return None
        unwritten = max(0, volume.capacity_bytes - allocated)
        total, free = files.space(self.pool.volumes_dir)
        low_water = max(total * THIN_LOW_WATER, self.config.reserve_bytes)
        if unwritten and free < unwritten and free < low_water:
            return (f"volume {volume.id} is thin and the pool {self.pool.root} has only"
                    f" {free} bytes free; writes to its {unwritten} unallocated bytes may"
                    " fail. Free space in the pool or move the volume")
        return None

"""What every node operation shares: its dependencies, the kernel's view of a volume,
and the teardown helpers (the staging record without the catalog, unmounting only ours)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.controller import ControllerCore
from csi_py.core.locks import KeyedTryLock
from csi_py.core.pool import Pool
from csi_py.domain.errors import FailedPrecondition, Internal, NotFound
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import Capability, Staging, Volume
from csi_py.domain.retry import tries
from csi_py.linux import Host
from csi_py.linux.errors import DeviceBusy, LinuxError
from csi_py.linux.loop import LoopDevice
from csi_py.linux.volume_view import VolumeKernel, VolumeView
from csi_py.state.catalog import Catalog
from csi_py.state.errors import CatalogError
from csi_py.state.records import Records

log = logging.getLogger("csi_py.core.node")

# How long an unmount is retried while the mount is busy. A mount can be busy for a moment
# only: a path walk through it holds it while it passes, and (the likely holder in the
# churn test's failures, not proven) a child process that another request's thread has
# just forked (mkfs, blkid) holds, until it execs, copies of this process's descriptors,
# among them the one on the mount's root that unstage thaws through just before it
# unmounts. Kubelet would retry too, but as a failed call; a mount still busy after this
# is reported.
UNMOUNT_BUSY_WAIT = 2.0


@dataclass(eq=False)
class NodeBase:
    """The dependencies of the node operations and the helpers they share."""

    config: Config
    catalog: Catalog
    pool: Pool
    host: Host
    locks: KeyedTryLock
    controller: ControllerCore
    records: Records = field(init=False)
    kernel: VolumeKernel = field(init=False)

    def __post_init__(self) -> None:
        self.records = Records(self.pool.records_dir)
        self.kernel = VolumeKernel(self.host.loops, self.host.mounts)

    def view(self, volume_id: str, record: Staging | None, *, scan: bool = False,
             at: str = "") -> VolumeView:
        """The kernel's view of the volume: its recorded device and the extras this
        process attached, verified by identity; every loop device is scanned only
        without a record (a teardown on a failed catalog) or when the recorded device
        fails its check. One read of the mount table; `at`: a path whose top mount
        may name a device of the volume (see VolumeKernel.view)."""
        recorded = record.device if record is not None else ""
        return self.kernel.view(self.pool.image_path(volume_id), recorded,
                                at=at, scan=scan or not recorded)

    def check_outside_pool(self, path: str, field: str) -> None:
        v.check_outside(path, field, self.pool.contains, self.pool.root)

    def fs_type_for(self, volume: Volume, cap: Capability) -> str:
        return cap.fs_type or volume.fs_type or self.config.default_fs_type

    def staging_for_teardown(self, volume_id: str, what: str) -> Staging | None:
        """The staging record of a volume being taken down. When the catalog cannot
        be read (the pool's filesystem failed) it is None: what is attached and
        mounted is still known to the kernel, which is all a teardown needs.
        Raises NotFound for a volume the catalog does not have."""
        if not v.is_volume_id(volume_id):
            raise NotFound("does not exist", subject=volume_subject(volume_id))
        try:
            if self.catalog.get_volume(volume_id) is None:
                raise NotFound("does not exist", subject=volume_subject(volume_id))
            return self.catalog.get_staging(volume_id)
        except CatalogError as exc:
            log.warning("volume %s: %s without the catalog: %s", volume_id, what, exc)
            return None

    def unmount(self, path: str, volume_id: str, times: int) -> None:
        """Take `times` mounts (this volume's, counted on a view) off `path`, one at a
        time (they may be stacked), each retried for :data:`UNMOUNT_BUSY_WAIT` while it
        is busy. Idempotent. Raises FailedPrecondition when it stays busy."""
        if times > 16:
            raise Internal(f"{path} has {times} stacked mounts of it",
                           subject=volume_subject(volume_id))
        for _ in range(times):
            self._unmount_once_free(path, volume_id)

    def _unmount_once_free(self, path: str, volume_id: str) -> None:
        """Unmount the top mount at `path`, retried while it is busy, for
        :data:`UNMOUNT_BUSY_WAIT`. Raises FailedPrecondition when it stays busy."""
        busy: DeviceBusy | None = None
        for _ in tries(UNMOUNT_BUSY_WAIT, 0.005, 0.2):
            try:
                self.host.mounts.unmount(path)
                return
            except DeviceBusy as exc:
                busy = exc
        raise FailedPrecondition(
            f"{path} is busy (a process still uses it after {UNMOUNT_BUSY_WAIT:g}s): {busy}",
            subject=volume_subject(volume_id),
        ) from busy

    def detach_quietly(self, device: LoopDevice) -> bool:
        """Detach `device`; False (logged) when it cannot be. Never raises LinuxError."""
        try:
            self.host.loops.detach(device.path)
            return True
        except LinuxError as exc:
            log.warning("could not detach %s: %s", device.path, exc)
            return False

    def thaw_quietly(self, mount_point: str) -> None:
        try:
            self.host.fs.thaw(mount_point)
        except LinuxError as exc:
            log.warning("could not thaw %s: %s", mount_point, exc)

"""Growing a volume's backing file (ControllerExpandVolume, and the node's expansion
with --expansion node): the checks, then the file, its loop devices, the catalog."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from csi_py.core import validation as v
from csi_py.core.capacity import check_range, fit_growth, resolve_size
from csi_py.core.crashpoints import crash_point
from csi_py.core.errmap import pool_full
from csi_py.core.rules import check_capability, check_volume_capability
from csi_py.core.volumes import Volumes
from csi_py.domain.errors import InvalidArgument, OutOfRange, ResourceExhausted
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability, CapacityRange, Provisioning, Volume
from csi_py.linux import files

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Expansion:
    """Grows volumes; never shrinks them. Works over the same catalog, pool, host,
    locks and space as the volumes it grows."""

    volumes: Volumes

    def expand(
        self, volume_id: str, capacity: CapacityRange, cap: Capability | None
    ) -> tuple[int, bool]:
        """Grow a volume's backing file (and its loop device, if attached here) to the
        requested size. Returns (new capacity, whether the node must grow the
        filesystem). Idempotent: a volume already that large is left alone.

        Raises InvalidArgument, NotFound, OutOfRange (shrinking, or over the limit),
        ResourceExhausted (no room for a thick volume), Aborted.
        """
        v.require(volume_id, "volume_id")
        subject = volume_subject(volume_id)
        check_range(capacity, subject)
        if capacity.required_bytes == 0 and capacity.limit_bytes == 0:
            raise InvalidArgument("capacity_range is required", subject=subject)
        if cap is not None:
            check_capability(cap, self.volumes.config.filesystems)
        with self.volumes.locks.hold(volume_id, "ControllerExpandVolume"):
            return self._expand_locked(volume_id, capacity, cap)

    def _expand_locked(
        self, volume_id: str, capacity: CapacityRange, cap: Capability | None
    ) -> tuple[int, bool]:
        volume = self.volumes.get_ready_volume(volume_id)
        if cap is not None:
            check_volume_capability(volume, cap)
        if capacity.limit_bytes and capacity.limit_bytes < volume.capacity_bytes:
            raise OutOfRange(
                f"has {volume.capacity_bytes} bytes; shrinking it to"
                f" at most {capacity.limit_bytes} is not supported",
                subject=volume_subject(volume_id),
            )
        # A filesystem must be grown by the node (NodeExpandVolume, or the next
        # NodeStageVolume, which grows a filesystem smaller than its device).
        needs_node = cap is None or cap.access_type is AccessType.MOUNT
        if capacity.required_bytes <= volume.capacity_bytes:
            return volume.capacity_bytes, needs_node
        return self.grow_locked(volume, capacity, needs_node), needs_node

    def grow_locked(self, volume: Volume, capacity: CapacityRange, mount: bool) -> int:
        """Grow the backing file (and any loop device on it) to fit `capacity`; the
        caller holds the volume's lock and checked the range. Returns the new size.

        Raises OutOfRange, ResourceExhausted.
        """
        volume_id = volume.id
        size = resolve_size(self.volumes.config, capacity, volume.fs_type, False)
        size = fit_growth(volume.fs_type, mount, volume.capacity_bytes, size,
                          capacity.limit_bytes, volume_subject(volume_id))
        thick = volume.provisioning is Provisioning.THICK
        self.volumes.space.check_growth_fits(volume, size - volume.capacity_bytes)
        path = self.volumes.pool.image_path(volume_id)
        try:
            files.grow_image(path, size, preallocate=thick)
            crash_point("expand.file_grown")
        except OSError as exc:
            if pool_full(exc):
                raise ResourceExhausted(
                    f"the pool ran out of space growing to {size}",
                    subject=volume_subject(volume_id),
                ) from exc
            raise
        for device in self.volumes.host.loops.attached_to(path):
            self.volumes.host.loops.refresh_capacity(device.path)
        crash_point("expand.device_refreshed")
        self.volumes.catalog.set_volume_capacity(volume_id, size)
        crash_point("expand.committed")
        log.info("volume %s grown from %d to %d bytes", volume_id, volume.capacity_bytes,
                 size)
        return size

"""NodeExpandVolume and NodeGetVolumeStats, unlocked: let the node see a volume's new size
(its loop devices refreshed, its filesystem grown online), and report its usage."""

from __future__ import annotations

from dataclasses import asdict

from csi_py.core import validation as v
from csi_py.core.capacity import check_range
from csi_py.core.crashpoints import crash_point
from csi_py.core.node_base import NodeBase, log
from csi_py.core.rules import check_volume_capability
from csi_py.domain.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability, CapacityRange, Volume, VolumeStats
from csi_py.linux import targets
from csi_py.linux.volume_view import mount_is_of


class ExpandWork(NodeBase):
    def expand_locked(
        self,
        volume_id: str,
        volume_path: str,
        capacity: CapacityRange | None,
        cap: Capability | None,
    ) -> int:
        """The work of NodeCore.expand, under the volume's lock. Idempotent."""
        volume = self.controller.volumes.get_ready_volume(volume_id)
        try:
            volume_path = v.check_absolute_path(volume_path, "volume_path")
        except InvalidArgument:
            raise NotFound(
                f"is not published at {volume_path!r}", subject=volume_subject(volume_id)) from None
        record = self.catalog.get_staging(volume_id)
        view = self.view(volume_id, record)
        if not view.devices or not view.shows(view.top(volume_path)):
            raise NotFound(f"is not staged or published at {volume_path}",
                           subject=volume_subject(volume_id))
        if cap is not None:
            if record is not None and record.access_type is not cap.access_type:
                raise InvalidArgument(
                    f"is staged for {record.access_type.value} access,"
                    f" not {cap.access_type.value}",
                    subject=volume_subject(volume_id),
                )
            check_volume_capability(volume, cap)
        if capacity is not None and self.config.expansion == "node" and \
                capacity.required_bytes > volume.capacity_bytes and \
                (not capacity.limit_bytes or capacity.limit_bytes >= volume.capacity_bytes):
            # --expansion node: the file grows here, on the volume's node (the
            # resizer, maybe elsewhere, only recorded the new size).
            mount = record is None or record.access_type is AccessType.MOUNT
            self.controller.expansion.grow_locked(volume, capacity, mount)
            volume = self.controller.volumes.get_ready_volume(volume_id)
        if capacity is not None:
            check_node_capacity(volume, capacity)
        for device in view.devices:
            self.host.loops.refresh_capacity(device.path)
        crash_point("node_expand.refreshed")
        if record is None or record.access_type is AccessType.BLOCK or not record.fs_type:
            return volume.capacity_bytes
        staged = view.staged or view.devices[0]
        mount_point = record.staging_path
        if not self.host.fs.needs_grow(staged.path, mount_point, record.fs_type):
            return volume.capacity_bytes
        if not self.host.fs.can_grow_online(record.fs_type):
            raise FailedPrecondition(
                f"growing a mounted {record.fs_type} filesystem needs"
                " CAP_SYS_RESOURCE, which this driver process lacks; run the node plugin"
                " privileged, or the filesystem is grown at the volume's next stage",
                subject=volume_subject(volume_id),
            )
        self.host.fs.grow(staged.path, mount_point, record.fs_type)
        crash_point("node_expand.grown")
        log.info("volume %s: %s grown online to fill %d bytes", volume_id, record.fs_type,
                 volume.capacity_bytes)
        return volume.capacity_bytes

    def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        """Usage of the volume published (or staged) at volume_path. Read-only.

        Raises InvalidArgument, NotFound (unknown volume, or not at that path).
        """
        v.require(volume_id, "volume_id")
        v.require(volume_path, "volume_path")
        self.controller.volumes.get_ready_volume(volume_id)
        try:
            volume_path = v.check_absolute_path(volume_path, "volume_path")
        except InvalidArgument:
            # A path that cannot be ours is simply not where the volume is (the spec's
            # NOT_FOUND); it is never touched.
            raise NotFound(f"is not published at {volume_path!r}",
                           subject=volume_subject(volume_id)) from None
        # A broken volume (its backing file deleted, its device detached) is still
        # reported: its volume condition says what is wrong.
        record = self.catalog.get_staging(volume_id)
        view = self.view(volume_id, record, at=volume_path)
        paths = [d.path for d in view.devices]
        if view.lost and record is not None and record.staged:
            paths.append(view.lost)
        if not paths:
            raise NotFound("is not staged on this node", subject=volume_subject(volume_id))
        entry = view.top(volume_path)
        if entry is None or not any(mount_is_of(entry, p) for p in paths):
            raise NotFound(f"is not mounted at {volume_path}", subject=volume_subject(volume_id))
        if targets.is_block_device(volume_path):
            size = self.host.fs.block_device_size(paths[0])
            return VolumeStats(total_bytes=size, available_bytes=0, used_bytes=0, is_block=True)
        fs = self.host.fs.statfs(volume_path)
        # FsStats's counts are the first six fields of VolumeStats, by the same names.
        return VolumeStats(**asdict(fs))


def check_node_capacity(volume: Volume, rng: CapacityRange) -> None:
    """NodeExpandVolume only makes the node see the size ControllerExpandVolume gave the
    volume; a range that size does not satisfy is the spec's "Unsupported capacity_range"
    (OUT_OF_RANGE). Raises InvalidArgument for a malformed range."""
    check_range(rng, volume_subject(volume.id))
    req, lim, size = rng.required_bytes, rng.limit_bytes, volume.capacity_bytes
    if req > size:
        raise OutOfRange(
            f"has {size} bytes, less than the required {req};"
            " grow it with ControllerExpandVolume first",
            subject=volume_subject(volume.id),
        )
    if lim and lim < size:
        raise OutOfRange(
            f"has {size} bytes, more than the limit {lim}; volumes"
            " cannot shrink",
            subject=volume_subject(volume.id),
        )

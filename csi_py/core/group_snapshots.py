"""Group snapshots: several volumes captured at one instant (their filesystems frozen
together), deleted and looked up as one."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.capacity import Space
from csi_py.core.capture import Capturer
from csi_py.core.crashpoints import crash_point
from csi_py.core.errmap import pool_full
from csi_py.core.locks import KeyedTryLock
from csi_py.core.pool import Pool
from csi_py.core.rules import check_snapshot_parameters
from csi_py.core.snapshots import SnapshotCore
from csi_py.core.topology import snapshot_owner_elsewhere
from csi_py.domain.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, shown
from csi_py.domain.errors import group_snapshot as group_subject
from csi_py.domain.model import GroupSnapshot, Snapshot, SnapshotState
from csi_py.linux import files
from csi_py.state.catalog import Catalog
from csi_py.state.errors import NameTaken

log = logging.getLogger(__name__)


def _check_members(group: GroupSnapshot, snapshot_ids: list[str]) -> None:
    """The spec's "Snapshot list mismatch" (INVALID_ARGUMENT) when `snapshot_ids` is given
    and is not exactly the group's members. An empty list (csi-sanity sends none) is not
    checked."""
    if snapshot_ids and sorted(snapshot_ids) != sorted(group.snapshot_ids):
        raise InvalidArgument(
            f"holds snapshots {sorted(group.snapshot_ids)}, not {sorted(snapshot_ids)}",
            subject=group_subject(group.id))


@dataclass(eq=False)
class GroupSnapshots:
    """Group snapshots over the single-snapshot core (whose records they share)."""

    config: Config
    catalog: Catalog
    pool: Pool
    locks: KeyedTryLock
    space: Space
    capturer: Capturer
    snapshots: SnapshotCore

    def create_group(
        self, name: str, source_volume_ids: list[str], parameters: dict[str, str]
    ) -> GroupSnapshot:
        """Snapshot several volumes at one instant: all their filesystems are frozen
        together, captured, then thawed. Idempotent by name and source set.

        Raises InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, Aborted.
        """
        v.check_name(name, "name")
        if not source_volume_ids:
            raise InvalidArgument("source_volume_ids are required",
                                  subject=group_subject(name=name))
        repeated = sorted({vid for vid in source_volume_ids if source_volume_ids.count(vid) > 1})
        if repeated:
            raise InvalidArgument(
                f"source_volume_ids name volume(s) {repeated} more than once",
                subject=group_subject(name=name))
        check_snapshot_parameters(parameters, group_subject(name=name))
        with self.locks.hold("group-name:" + name, "CreateVolumeGroupSnapshot",
                             group_subject(name=name)):
            existing = self.catalog.get_group_by_name(name)
            if existing is not None:
                sources = sorted(self.catalog.get_snapshot(s).source_volume_id  # type: ignore
                                 for s in existing.snapshot_ids)
                if sources != sorted(source_volume_ids):
                    raise AlreadyExists(f"exists for volumes {sources}",
                                        subject=group_subject(existing.id, name))
                if existing.state is SnapshotState.READY:
                    return existing
                self._forget_group(existing)
            with ExitStack() as held:
                for vid in sorted(source_volume_ids):  # sorted: no lock-order surprises
                    held.enter_context(self.locks.hold(vid, "CreateVolumeGroupSnapshot"))
                return self._cut_locked(name, source_volume_ids)

    def _cut_locked(self, name: str, source_volume_ids: list[str]) -> GroupSnapshot:
        """Record, capture (all frozen together) and commit a group; the caller holds
        the name's and every source's lock. Undoes everything when a step fails."""
        sources = [self.snapshots.volumes.get_ready_volume(vid) for vid in source_volume_ids]
        self.space.check_copy_room(group_subject(name=name), sources)
        group = GroupSnapshot(v.new_group_id(), name, time.time(), SnapshotState.CREATING)
        try:
            self.catalog.insert_group(group)
        except NameTaken:
            raise AlreadyExists("already recorded", subject=group_subject(name=name)) from None
        snaps = [self.snapshots.record(f"{group.id}/{src.id}", src, group.id) for src in sources]
        crash_point("group.recorded")
        try:
            methods = self.capturer.capture(
                [(self.pool.image_path(src.id), self.pool.snapshot_path(s.id))
                 for src, s in zip(sources, snaps, strict=True)],
                [src.id for src in sources],
            )
            for snap, src, method in zip(snaps, sources, methods, strict=True):
                self.snapshots.describe(replace(snap, method=method), group, src)
        except BaseException as exc:
            for snap in snaps:
                files.remove_file(self.pool.snapshot_path(snap.id))
                self.snapshots.records.remove(snap.id)
            self.catalog.delete_group(group.id)
            if pool_full(exc):
                raise ResourceExhausted("the pool ran out of space",
                                        subject=group_subject(name=name)) from exc
            raise
        crash_point("group.captured")
        for snap, method in zip(snaps, methods, strict=True):
            self.catalog.update_snapshot(snap.id, SnapshotState.READY, method)
        self.catalog.set_group_state(group.id, SnapshotState.READY)
        crash_point("group.committed")
        log.info("group snapshot %s (%s) of %s cut", group.id, name, source_volume_ids)
        result = self.catalog.get_group(group.id)
        assert result is not None
        return result

    def _forget_group(self, group: GroupSnapshot) -> None:
        """Remove a group and its members' images and records."""
        self.catalog.set_group_state(group.id, SnapshotState.DELETING)
        for sid in group.snapshot_ids:
            files.remove_file(self.pool.snapshot_path(sid))
            self.snapshots.records.remove(sid)
        self.catalog.delete_group(group.id)
        self.pool.keep_catalog_reserve()

    def delete_group(self, group_id: str, snapshot_ids: list[str]) -> None:
        """Delete a group snapshot and its members. Idempotent: unknown is success.

        Raises InvalidArgument (empty id, or snapshot_ids given and not exactly the
        group's members: the spec's "Snapshot list mismatch"), Aborted.
        """
        v.require(group_id, "group_snapshot_id")
        if not v.is_group_id(group_id):
            return
        with self.locks.hold(group_id, "DeleteVolumeGroupSnapshot"):
            group = self.catalog.get_group(group_id)
            if group is None:
                # Group ids carry no node, but their members' ids do.
                self.snapshots.refuse_elsewhere(snapshot_ids, f"delete group snapshot {group_id}")
                return
            _check_members(group, snapshot_ids)
            self._forget_group(group)

    def get_group(self, group_id: str, snapshot_ids: list[str]) -> GroupSnapshot:
        """A ready group snapshot. Raises InvalidArgument (empty id, or a snapshot list
        mismatch), NotFound."""
        v.require(group_id, "group_snapshot_id")
        group = self.catalog.get_group(group_id) if v.is_group_id(group_id) else None
        if group is None or group.state is not SnapshotState.READY:
            for sid in snapshot_ids:
                elsewhere = snapshot_owner_elsewhere(sid, self.config)
                if elsewhere is not None:
                    raise NotFound(f"its member snapshot {shown(sid)} {elsewhere}; ask that"
                                   " node's driver",
                                   subject=group_subject(group_id))
            raise NotFound("does not exist", subject=group_subject(group_id))
        _check_members(group, snapshot_ids)
        return group

    def members(self, group: GroupSnapshot) -> list[Snapshot]:
        """The group's member snapshots that the catalog holds. Read-only."""
        found = (self.catalog.get_snapshot(sid) for sid in group.snapshot_ids)
        return [snap for snap in found if snap is not None]

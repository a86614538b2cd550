"""Snapshots of single volumes: create, delete, list and get (groups: group_snapshots.py).

Every operation records its intent in the catalog first (state CREATING or DELETING),
acts on the pool, then commits, so start-up reconciliation can finish or undo it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.capacity import Space
from csi_py.core.capture import Capturer
from csi_py.core.crashpoints import crash_point
from csi_py.core.errmap import pool_full
from csi_py.core.locks import KeyedTryLock
from csi_py.core.paging import after_token, cut, page_limit
from csi_py.core.pool import Pool
from csi_py.core.rules import check_snapshot_parameters
from csi_py.core.topology import require_here, snapshot_owner_elsewhere
from csi_py.core.volumes import Volumes
from csi_py.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from csi_py.domain.errors import snapshot as snapshot_subject
from csi_py.domain.model import GroupSnapshot, Snapshot, SnapshotState, Volume
from csi_py.domain.snapshot_ids import is_snapshot_id, new_snapshot_id
from csi_py.linux import files
from csi_py.linux.copies import Progress
from csi_py.linux.progress import ProgressFile, progress_file_name
from csi_py.state.catalog import Catalog
from csi_py.state.errors import NameTaken
from csi_py.state.records import Records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotListing:
    snapshots: tuple[Snapshot, ...]
    next_token: str


def ready_snapshot(catalog: Catalog, config: Config, snapshot_id: str,
                   field: str = "snapshot_id") -> Snapshot:
    """The ready snapshot that `snapshot_id` (the request's `field`) names. Read-only.
    Raises InvalidArgument (empty), NotFound (saying where it lives when its id names
    another node)."""
    v.require(snapshot_id, field)
    snap = catalog.get_snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
    if snap is not None and snap.ready:
        return snap
    which = "" if field == "snapshot_id" else f"(the {field}) "
    elsewhere = snapshot_owner_elsewhere(snapshot_id, config)
    raise NotFound(f"{which}{elsewhere}; ask that node's driver" if elsewhere else
                   f"{which}does not exist", subject=snapshot_subject(snapshot_id))


@dataclass(eq=False)
class SnapshotCore:
    """Snapshots of single volumes, each a file in the pool's snapshots directory."""

    config: Config
    catalog: Catalog
    pool: Pool
    locks: KeyedTryLock
    space: Space
    volumes: Volumes
    capturer: Capturer
    records: Records = field(init=False)

    def __post_init__(self) -> None:
        self.records = Records(self.pool.records_dir)

    def progress_path(self, name: str) -> str:
        """Where a copy-based capture of snapshot `name` reports its progress."""
        return os.path.join(self.pool.snapshots_dir, progress_file_name(name))

    # --- CreateSnapshot ----------------------------------------------------------------

    def create(
        self,
        source_volume_id: str,
        name: str,
        parameters: dict[str, str],
        progress: Progress | None = None,
        requisite: list[dict[str, str]] | None = None,
    ) -> Snapshot:
        """Cut a snapshot of a volume. Idempotent by name. The snapshot is usable only
        on this node (it is a file in this node's pool), so ``requisite`` topologies
        (accessibility_requirements) must include this node.

        Raises InvalidArgument, NotFound (source), AlreadyExists (name taken by a
        snapshot of another volume), ResourceExhausted (no room, or a requisite
        topology elsewhere), Aborted.
        """
        v.check_name(name, "name")
        v.require(source_volume_id, "source_volume_id")
        check_snapshot_parameters(parameters, snapshot_subject(name=name))
        require_here(snapshot_subject(name=name), requisite or [], self.config)
        with self.locks.hold("snapshot-name:" + name, "CreateSnapshot",
                             snapshot_subject(name=name)):
            existing = self.catalog.get_snapshot_by_name(name)
            if existing is not None:
                if existing.source_volume_id != source_volume_id:
                    raise AlreadyExists(
                        f"exists for volume {existing.source_volume_id}, not {source_volume_id}",
                        subject=snapshot_subject(existing.id, name))
                if existing.state is SnapshotState.DELETING:
                    raise Aborted("being deleted; retry",
                                  subject=snapshot_subject(existing.id, name))
                if existing.state is SnapshotState.READY:
                    return existing
                # CREATING: a capture died half way (reconciliation normally removes it).
                self._forget(existing)
            with self.locks.hold(source_volume_id, "CreateSnapshot"):
                return self._cut_locked(name, source_volume_id, progress)

    def _cut_locked(self, name: str, source_volume_id: str, progress: Progress | None
                    ) -> Snapshot:
        """Record, capture and commit a new snapshot; the caller holds the name's and
        the source's locks. Undoes everything when a step fails."""
        source = self.volumes.get_ready_volume(source_volume_id)
        self.space.check_copy_room(snapshot_subject(name=name), [source])
        snap = self.record(name, source, group_id="")
        report = progress or ProgressFile(self.progress_path(name))
        crash_point("snapshot.recorded")
        try:
            (method,) = self.capturer.capture(
                [(self.pool.image_path(source.id), self.pool.snapshot_path(snap.id))],
                [source.id],
                report,
            )
            self.describe(replace(snap, method=method), None, source)
        except OSError as exc:
            self._undo(snap.id)
            if pool_full(exc):
                raise ResourceExhausted(
                    f"(of volume {source.id}) the pool ran out of space",
                    subject=snapshot_subject(name=name)) from exc
            raise
        except BaseException:
            self._undo(snap.id)
            raise
        finally:
            if isinstance(report, ProgressFile):
                report.remove()
        crash_point("snapshot.captured")
        self.catalog.update_snapshot(snap.id, SnapshotState.READY, method)
        crash_point("snapshot.committed")
        log.info("snapshot %s (%s) of %s cut by %s", snap.id, name, source.id, method)
        return replace(snap, state=SnapshotState.READY, method=method)

    def record(self, name: str, source: Volume, group_id: str) -> Snapshot:
        """Insert a CREATING snapshot of `source`. Raises AlreadyExists (the name was
        recorded behind our back)."""
        snap = Snapshot(
            id=new_snapshot_id(self.config.node_id),
            name=name,
            source_volume_id=source.id,
            size_bytes=source.capacity_bytes,
            created_at=time.time(),
            state=SnapshotState.CREATING,
            fs_type=source.fs_type,
            group_id=group_id,
        )
        try:
            return self.catalog.insert_snapshot(snap)
        except NameTaken:
            raise AlreadyExists("already recorded", subject=snapshot_subject(name=name)) from None

    def describe(self, snap: Snapshot, group: GroupSnapshot | None, source: Volume) -> None:
        """Write the snapshot's own record (after its image is complete, before the
        catalog commits it), with its source's format state."""
        self.records.put_snapshot(snap, group, self.records.format_state(source.id))

    def _undo(self, snapshot_id: str) -> None:
        """Take back a capture that failed: its image, its record, its row."""
        files.remove_file(self.pool.snapshot_path(snapshot_id))
        self.records.remove(snapshot_id)
        self.catalog.delete_snapshot(snapshot_id)

    def _forget(self, snap: Snapshot) -> None:
        self.catalog.update_snapshot(snap.id, SnapshotState.DELETING)
        crash_point("snapshot_delete.marked")
        files.remove_file(self.pool.snapshot_path(snap.id))
        crash_point("snapshot_delete.file_removed")
        self.records.remove(snap.id)
        self.catalog.delete_snapshot(snap.id)
        self.pool.keep_catalog_reserve()

    # --- DeleteSnapshot ----------------------------------------------------------------

    def delete(self, snapshot_id: str) -> None:
        """Delete a snapshot. Idempotent: an unknown id is success, unless the id names
        another node (see refuse_elsewhere).

        Raises InvalidArgument (empty id, or a member of a group snapshot),
        FailedPrecondition (the id names another node), Aborted.
        """
        v.require(snapshot_id, "snapshot_id")
        if not is_snapshot_id(snapshot_id):
            return
        with self.locks.hold(snapshot_id, "DeleteSnapshot"):
            snap = self.catalog.get_snapshot(snapshot_id)
            if snap is None:
                self.refuse_elsewhere([snapshot_id], "delete it")
                return
            if snap.group_id:
                raise InvalidArgument(
                    f"part of group snapshot {snap.group_id};"
                    " delete the group with DeleteVolumeGroupSnapshot",
                    subject=snapshot_subject(snapshot_id))
            self._forget(snap)
            log.info("deleted snapshot %s (%s)", snap.id, snap.name)

    # --- ListSnapshots / GetSnapshot ---------------------------------------------------

    def list_page(
        self, max_entries: int, starting_token: str, source_volume_id: str, snapshot_id: str
    ) -> SnapshotListing:
        """A page of ready snapshots, optionally filtered. Raises InvalidArgument,
        Aborted (a token this catalog never issued)."""
        limit = page_limit(max_entries)
        after = after_token(starting_token, self.catalog.highest_snapshot_seq_issued)
        if snapshot_id and not is_snapshot_id(snapshot_id):
            return SnapshotListing((), "")
        rows = self.catalog.list_snapshots(after, limit + 1, source_volume_id=source_volume_id,
                                           snapshot_id=snapshot_id)
        page, next_token = cut(rows, limit)
        return SnapshotListing(tuple(s for s in page if s.ready), next_token)

    def get(self, snapshot_id: str) -> Snapshot:
        """A ready snapshot. Raises InvalidArgument (empty), NotFound (saying where it
        lives when its id names another node)."""
        return ready_snapshot(self.catalog, self.config, snapshot_id)

    def refuse_elsewhere(self, snapshot_ids: list[str], action: str) -> None:
        """Deleting what this node does not hold, when an id says another node holds it.

        The spec answers OK for a snapshot that does not exist, but this driver cannot
        know that: the snapshot is in another node's pool. An OK would make the CO forget
        it (the VolumeSnapshotContent goes) while its data stays on that node for good.
        So this is FAILED_PRECONDITION, which the CO retries, naming the node; in the
        distributed layout the request belongs to that node's csi-snapshotter (the one
        the content's snapshot.storage.kubernetes.io/managed-by label names).
        Old-style ids (no node) keep the spec's OK. Raises FailedPrecondition."""
        for sid in snapshot_ids:
            elsewhere = snapshot_owner_elsewhere(sid, self.config)
            if elsewhere is not None:
                raise FailedPrecondition(
                    f"{elsewhere}; {action} through that node's driver (in Kubernetes, the"
                    " csi-snapshotter running on that node). Nothing was deleted",
                    subject=snapshot_subject(sid))

"""Snapshot logic: create, delete, list and get snapshots, and group snapshots.

Every operation records its intent in the catalog first (state CREATING or DELETING),
acts on the pool, then commits, so start-up reconciliation can finish or undo it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace

from csi_py.core import validation as v
from csi_py.core.capture import Capturer, Progress
from csi_py.core.controller import (
    IGNORED_PARAMETER_PREFIXES,
    MAX_PAGE,
    TOKEN,
    ControllerCore,
)
from csi_py.core.crashpoints import crash_point
from csi_py.core.locks import KeyedTryLock
from csi_py.core.pool import Pool
from csi_py.core.topology import require_here, snapshot_owner_elsewhere
from csi_py.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from csi_py.domain.model import GroupSnapshot, Snapshot, SnapshotState, Volume
from csi_py.domain.snapshot_ids import is_snapshot_id, new_snapshot_id
from csi_py.linux import Host, files
from csi_py.state.catalog import Catalog, NameTaken
from csi_py.state.records import Records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotListing:
    snapshots: tuple[Snapshot, ...]
    next_token: str


def _check_parameters(parameters: dict[str, str], what: str) -> None:
    v.check_map(parameters, "parameters")
    unknown = sorted(k for k in parameters if not k.startswith(IGNORED_PARAMETER_PREFIXES))
    if unknown:
        raise InvalidArgument(f"{what}: unknown parameter(s) {unknown}; snapshots take none")


def progress_file_name(name: str) -> str:
    """The progress file of a snapshot being cut, named from the snapshot's name (the
    only thing a client knows before the call returns). A dot file: start-up
    reconciliation removes stale ones."""
    return ".progress-" + hashlib.sha256(name.encode()).hexdigest()[:24] + ".json"


class ProgressFile:
    """Reports a copy's progress as a small JSON file that `csi-py snapshot create`
    polls, so a person watching a large copy sees it move."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, done: int, total: int) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({"done": done, "total": total, "time": time.time()}, fh)
            os.replace(tmp, self.path)
        except OSError:
            log.debug("could not write progress to %s", self.path)

    def remove(self) -> None:
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _check_members(group: GroupSnapshot, snapshot_ids: list[str]) -> None:
    """The spec's "Snapshot list mismatch" (INVALID_ARGUMENT) when `snapshot_ids` is given
    and is not exactly the group's members. An empty list (csi-sanity sends none) is not
    checked."""
    if snapshot_ids and sorted(snapshot_ids) != sorted(group.snapshot_ids):
        raise InvalidArgument(
            f"group snapshot {group.id} holds snapshots {sorted(group.snapshot_ids)}, not"
            f" {sorted(snapshot_ids)}"
        )


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class SnapshotCore:
    def __init__(
        self,
        catalog: Catalog,
        pool: Pool,
        host: Host,
        locks: KeyedTryLock,
        controller: ControllerCore,
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.host = host
        self.locks = locks
        self.controller = controller
        self.capturer = Capturer(catalog, pool, host)
        self.records = Records(pool.records_dir)

    def progress_path(self, name: str) -> str:
        """Where a copy-based capture of snapshot `name` reports its progress."""
        return os.path.join(self.pool.snapshots_dir, progress_file_name(name))

    # --- space -------------------------------------------------------------------------

    def _check_room(self, what: str, volumes: list[Volume]) -> None:
        """A copy needs the sources' allocated bytes; a reflink needs (almost) none."""
        if files.supports_reflink(self.pool.snapshots_dir):
            return
        needed = sum(files.allocated_bytes(self.pool.image_path(vol.id)) for vol in volumes)
        _, free = files.space(self.pool.snapshots_dir)
        if needed > max(0, free - self.controller.config.reserve_bytes):
            raise ResourceExhausted(
                f"{what}: copying {needed} allocated bytes needs more than the {free} bytes"
                f" free in {self.pool.root}"
            )

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
        _check_parameters(parameters, f"snapshot {name!r}")
        require_here(f"snapshot {name!r}", requisite or [], self.controller.config)
        with self.locks.hold("snapshot-name:" + name, "CreateSnapshot"):
            existing = self.catalog.get_snapshot_by_name(name)
            if existing is not None:
                if existing.source_volume_id != source_volume_id:
                    raise AlreadyExists(
                        f"snapshot {name!r} exists ({existing.id}) for volume"
                        f" {existing.source_volume_id}, not {source_volume_id}"
                    )
                if existing.state is SnapshotState.DELETING:
                    raise Aborted(f"snapshot {name!r} ({existing.id}) is being deleted; retry")
                if existing.state is SnapshotState.READY:
                    return existing
                # CREATING: a capture died half way (reconciliation normally removes it).
                self._forget(existing)
            with self.locks.hold(source_volume_id, "CreateSnapshot"):
                source = self.controller.get_ready_volume(source_volume_id)
                self._check_room(f"snapshot {name!r}", [source])
                snap = self._record(name, source, group_id="")
                report = progress or ProgressFile(self.progress_path(name))
                crash_point("snapshot.recorded")
                try:
                    (method,) = self.capturer.capture(
                        [(self.pool.image_path(source.id), self.pool.snapshot_path(snap.id))],
                        [source.id],
                        report,
                    )
                    self._describe(replace(snap, method=method), None, source)
                except OSError as exc:
                    self._undo(snap.id)
                    if _no_space(exc):
                        raise ResourceExhausted(
                            f"snapshot {name!r} of volume {source.id}: the pool ran out of space"
                        ) from exc
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

    def _record(self, name: str, source: Volume, group_id: str) -> Snapshot:
        snap = Snapshot(
            id=new_snapshot_id(self.controller.config.node_id),
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
            raise AlreadyExists(f"snapshot name {name!r} is already recorded") from None

    def _describe(self, snap: Snapshot, group: GroupSnapshot | None, source: Volume) -> None:
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
        another node (see _refuse_elsewhere).

        Raises InvalidArgument (empty id, or a member of a group snapshot),
        FailedPrecondition (the id names another node), Aborted.
        """
        v.require(snapshot_id, "snapshot_id")
        if not is_snapshot_id(snapshot_id):
            return
        with self.locks.hold(snapshot_id, "DeleteSnapshot"):
            snap = self.catalog.get_snapshot(snapshot_id)
            if snap is None:
                self._refuse_elsewhere([snapshot_id], "delete it")
                return
            if snap.group_id:
                raise InvalidArgument(
                    f"snapshot {snapshot_id} is part of group snapshot {snap.group_id};"
                    " delete the group with DeleteVolumeGroupSnapshot"
                )
            self._forget(snap)
            log.info("deleted snapshot %s (%s)", snap.id, snap.name)

    # --- ListSnapshots / GetSnapshot ---------------------------------------------------

    def list_page(
        self, max_entries: int, starting_token: str, source_volume_id: str, snapshot_id: str
    ) -> SnapshotListing:
        """A page of ready snapshots, optionally filtered. Raises InvalidArgument,
        Aborted (a token this catalog never issued)."""
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        after = 0
        if starting_token:
            if not TOKEN.fullmatch(starting_token) or \
                    int(starting_token) > self.catalog.highest_snapshot_seq_issued():
                raise Aborted(f"starting_token {starting_token!r} is not one this driver issued;"
                              " list again from the start")
            after = int(starting_token)
        if snapshot_id and not is_snapshot_id(snapshot_id):
            return SnapshotListing((), "")
        limit = min(max_entries or MAX_PAGE, MAX_PAGE)
        page = self.catalog.list_snapshots(after, limit + 1, source_volume_id=source_volume_id,
                                           snapshot_id=snapshot_id)
        more = len(page) > limit
        page = page[:limit]
        ready = tuple(s for s in page if s.ready)
        return SnapshotListing(ready, str(page[-1].seq) if more and page else "")

    def get(self, snapshot_id: str) -> Snapshot:
        """A ready snapshot. Raises InvalidArgument (empty), NotFound (saying where it
        lives when its id names another node)."""
        v.require(snapshot_id, "snapshot_id")
        snap = self.catalog.get_snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
        if snap is None or not snap.ready:
            elsewhere = snapshot_owner_elsewhere(snapshot_id, self.controller.config)
            if elsewhere is not None:
                raise NotFound(f"{elsewhere}; ask that node's driver")
            raise NotFound(f"snapshot {snapshot_id!r} does not exist")
        return snap

    def _refuse_elsewhere(self, snapshot_ids: list[str], action: str) -> None:
        """Deleting what this node does not hold, when an id says another node holds it.

        The spec answers OK for a snapshot that does not exist, but this driver cannot
        know that: the snapshot is in another node's pool. An OK would make the CO forget
        it (the VolumeSnapshotContent goes) while its data stays on that node for good.
        So this is FAILED_PRECONDITION, which the CO retries, naming the node; in the
        distributed layout the request belongs to that node's csi-snapshotter (the one
        the content's snapshot.storage.kubernetes.io/managed-by label names).
        Old-style ids (no node) keep the spec's OK. Raises FailedPrecondition."""
        for sid in snapshot_ids:
            elsewhere = snapshot_owner_elsewhere(sid, self.controller.config)
            if elsewhere is not None:
                raise FailedPrecondition(
                    f"{elsewhere}; {action} through that node's driver (in Kubernetes, the"
                    " csi-snapshotter running on that node). Nothing was deleted")

    # --- group snapshots ---------------------------------------------------------------

    def create_group(
        self, name: str, source_volume_ids: list[str], parameters: dict[str, str]
    ) -> GroupSnapshot:
        """Snapshot several volumes at one instant: all their filesystems are frozen
        together, captured, then thawed. Idempotent by name and source set.

        Raises InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, Aborted.
        """
        v.check_name(name, "name")
        if not source_volume_ids:
            raise InvalidArgument(f"group snapshot {name!r}: source_volume_ids are required")
        repeated = sorted({vid for vid in source_volume_ids if source_volume_ids.count(vid) > 1})
        if repeated:
            raise InvalidArgument(
                f"group snapshot {name!r}: source_volume_ids name volume(s) {repeated} more"
                " than once"
            )
        _check_parameters(parameters, f"group snapshot {name!r}")
        with self.locks.hold("group-name:" + name, "CreateVolumeGroupSnapshot"):
            existing = self.catalog.get_group_by_name(name)
            if existing is not None:
                sources = sorted(self.catalog.get_snapshot(s).source_volume_id  # type: ignore
                                 for s in existing.snapshot_ids)
                if sources != sorted(source_volume_ids):
                    raise AlreadyExists(
                        f"group snapshot {name!r} exists ({existing.id}) for volumes {sources}"
                    )
                if existing.state is SnapshotState.READY:
                    return existing
                self._forget_group(existing)
            held = []
            try:
                for vid in sorted(source_volume_ids):  # sorted: no lock-order surprises
                    cm = self.locks.hold(vid, "CreateVolumeGroupSnapshot")
                    cm.__enter__()
                    held.append(cm)
                return self._cut_group(name, source_volume_ids)
            finally:
                for cm in reversed(held):
                    cm.__exit__(None, None, None)

    def _cut_group(self, name: str, source_volume_ids: list[str]) -> GroupSnapshot:
        sources = [self.controller.get_ready_volume(vid) for vid in source_volume_ids]
        self._check_room(f"group snapshot {name!r}", sources)
        group = GroupSnapshot(v.new_group_id(), name, time.time(), SnapshotState.CREATING)
        try:
            self.catalog.insert_group(group)
        except NameTaken:
            raise AlreadyExists(f"group snapshot name {name!r} is already recorded") from None
        snaps = [self._record(f"{group.id}/{src.id}", src, group.id) for src in sources]
        crash_point("group.recorded")
        try:
            methods = self.capturer.capture(
                [(self.pool.image_path(src.id), self.pool.snapshot_path(s.id))
                 for src, s in zip(sources, snaps, strict=True)],
                [src.id for src in sources],
            )
            for snap, src, method in zip(snaps, sources, methods, strict=True):
                self._describe(replace(snap, method=method), group, src)
        except BaseException as exc:
            for snap in snaps:
                files.remove_file(self.pool.snapshot_path(snap.id))
                self.records.remove(snap.id)
            self.catalog.delete_group(group.id)
            if isinstance(exc, OSError) and _no_space(exc):
                raise ResourceExhausted(
                    f"group snapshot {name!r}: the pool ran out of space") from exc
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
        self.catalog.set_group_state(group.id, SnapshotState.DELETING)
        for sid in group.snapshot_ids:
            files.remove_file(self.pool.snapshot_path(sid))
            self.records.remove(sid)
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
                self._refuse_elsewhere(snapshot_ids, f"delete group snapshot {group_id}")
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
                elsewhere = snapshot_owner_elsewhere(sid, self.controller.config)
                if elsewhere is not None:
                    raise NotFound(f"group snapshot {group_id!r}: its member {elsewhere};"
                                   " ask that node's driver")
            raise NotFound(f"group snapshot {group_id!r} does not exist")
        _check_members(group, snapshot_ids)
        return group

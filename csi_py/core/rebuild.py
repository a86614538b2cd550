"""Rebuilding the catalog from the pool and the kernel.

The catalog is an index of intent; the pool's images describe themselves (one record
each, state/records.py) and the kernel knows what is attached and mounted. So a lost,
empty, truncated or garbled catalog costs nothing:

- an unreadable catalog file is moved aside (never deleted) and a new one is made;
- every record whose image exists and that the catalog lacks is adopted (volumes,
  snapshots, and their group snapshots);
- every loop device on a pool image with no staging record is adopted as a staging
  (state ADOPTED), with the mount the kernel shows for it, so publish, unpublish,
  unstage and delete keep working for pods that were running all along;
- catalog entries without a record (a pool from before records) get one.

Nothing here unmounts, detaches or deletes an image. The only thing removed is a
record whose image is gone: it describes nothing, and it is ours.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, TypeVar, get_args

from csi_py.core.identity import volume_of_device
from csi_py.core.pool import Pool, PoolError
from csi_py.core.validation import is_volume_id
from csi_py.domain.findings import Findings
from csi_py.domain.model import (
    AccessType,
    GroupSnapshot,
    SnapshotState,
    Staging,
    StagingState,
    Volume,
    VolumeState,
)
from csi_py.domain.snapshot_ids import is_snapshot_id
from csi_py.linux import Host, files
from csi_py.linux.loop import LoopDevice
from csi_py.state.catalog import Catalog
from csi_py.state.errors import CatalogDamaged, CatalogError
from csi_py.state.records import Records

log = logging.getLogger(__name__)

_R = TypeVar("_R")

# Mount types that show a device node bind-mounted onto a file (a published block
# volume), not a filesystem on the device.
NODE_FS_TYPES = ("devtmpfs", "tmpfs")


RebuildKind = Literal[
    "catalog_moved_to", "adopted_volumes", "adopted_snapshots", "adopted_groups",
    "adopted_stagings", "records_written", "stale_records", "unreadable_records",
    "conflicts", "record_errors"]


class RebuildReport(Findings[RebuildKind]):
    """What a rebuild found and did (or, without `apply`, would do). `record_errors`
    are records that could not be written; `conflicts` are records whose name another
    volume or snapshot in the catalog already has (not adopted)."""

    KINDS = get_args(RebuildKind)


def open_catalog(pool: Pool, on_full: object = None, *, move_aside: bool = True
                 ) -> tuple[Catalog, str]:
    """Open the pool's catalog. One that is not a sound SQLite catalog (garbled,
    truncated) is moved aside with its WAL and shared-memory files, named
    `catalog.db.broken-<time>`, and a new empty one is made for the rebuild; returns
    (catalog, the moved file or "").

    Raises CatalogTooNew (never moved: a newer csi-py wrote it), CatalogError when
    it cannot be opened for another reason (I/O errors, a full pool: the file is
    left as it is) or cannot be moved, CatalogDamaged when `move_aside` is False.
    """
    path = pool.catalog_path
    try:
        return Catalog(path, on_full), ""  # type: ignore[arg-type]
    except CatalogDamaged as exc:
        if not move_aside:
            raise
        broken = f"{path}.broken-{time.strftime('%Y%m%dT%H%M%S')}"
        log.error("%s; moving it to %s and rebuilding the catalog from the pool", exc,
                  broken)
        try:
            for suffix in ("", "-wal", "-shm"):
                files.move_aside(path + suffix, broken + suffix)
        except OSError as move:
            raise CatalogError(
                f"{exc}; it could not be moved aside for a rebuild either ({move})") from move
    return Catalog(path, on_full), broken  # type: ignore[arg-type]


@dataclass(frozen=True)
class PoolListing:
    """The pool's image directories and the node's loop devices, each listed once, for
    a start-up that needs them twice (rebuild, then reconciliation)."""

    volume_names: list[str]
    snapshot_names: list[str]
    attached: list[LoopDevice]

    @classmethod
    def of(cls, pool: Pool, host: Host) -> PoolListing:
        """List them now. Raises OSError when a directory cannot be read."""
        return cls(files.list_names(pool.volumes_dir), files.list_names(pool.snapshots_dir),
                   host.loops.list_attached())


def rebuild(catalog: Catalog, pool: Pool, records: Records, host: Host, *,
            apply: bool = True, read_known: bool = True,
            listing: PoolListing | None = None) -> RebuildReport:
    """Adopt what the pool and the kernel hold and the catalog lacks (see the module
    docstring). Idempotent: a second run finds nothing to do. With apply=False
    nothing is written; the report says what would be.

    With read_known=False (the driver's start-up) the records of objects the catalog
    already has are not read: which records and images exist is learnt from their
    directories, so a start with 10,000 volumes reads no record at all. Only
    `csi-py pool check/rebuild` (read_known=True) reads every record, and so also
    reports (and rewrites) a garbled record of a volume the catalog knows.

    Raises OSError when the records directory cannot be read, CatalogError when the
    catalog cannot be written.
    """
    report = RebuildReport()
    listing = listing or PoolListing.of(pool, host)
    known = _Known.of(catalog, records, listing)
    _adopt_records(catalog, pool, records, known, report, apply, read_known)
    _backfill_records(catalog, pool, records, known, report, apply, read_known)
    _adopt_stagings(catalog, pool, host, listing.attached, report, apply)
    for line in report.lines():
        log.info("rebuild: %s", line)
    return report


@dataclass
class _Known:
    """What the catalog and the pool's directories hold, each read once."""

    volumes: dict[str, VolumeState]
    snapshots: dict[str, SnapshotState]
    record_names: set[str]   # record files present (not necessarily readable)
    good_records: set[str]   # record files read and found sound (filled by the scan)
    volume_images: set[str]
    snapshot_images: set[str]

    @classmethod
    def of(cls, catalog: Catalog, records: Records, listing: PoolListing) -> _Known:
        return cls(catalog.volume_states(), catalog.snapshot_states(), records.names(),
                   set(), set(listing.volume_names), set(listing.snapshot_names))

    def has_record(self, object_id: str, read_known: bool) -> bool:
        """Whether the object's record is in place: sound, when every record was read;
        present, when known ones were not read."""
        name = Records.name_of(object_id)
        return name in self.good_records if read_known else name in self.record_names


def _describe(vol: Volume) -> str:
    return f"{vol.id} name={vol.name!r} size={vol.capacity_bytes} fs={vol.fs_type or '-'}"


def _adopt_records(catalog: Catalog, pool: Pool, records: Records, known: _Known,
                   report: RebuildReport, apply: bool, read_known: bool) -> None:
    skip: set[str] = set()
    if not read_known:
        # Records of known objects are not read; a known object whose image is gone
        # still has its record reported as stale (and kept: reconciliation decides).
        for object_id in [*known.volumes, *known.snapshots]:
            name = Records.name_of(object_id)
            if name not in known.record_names:
                continue
            skip.add(name)
            if object_id in known.volumes:
                gone = Pool.image_name(object_id) not in known.volume_images
            else:
                gone = os.path.basename(pool.snapshot_path(object_id)) \
                    not in known.snapshot_images
            if gone:
                image = pool.image_path(object_id) if object_id in known.volumes else \
                    pool.snapshot_path(object_id)
                report.add("stale_records", f"{records.path(object_id)} (image {image} is gone)")
    scan = records.scan(skip)
    report.extend("unreadable_records", scan.unreadable)
    adoptable = functools.partial(_adoptable, records=records, known=known, report=report,
                                  apply=apply)
    for rec, image, size in adoptable(scan.volumes, lambda r: r.volume.id, "volume",
                                      is_volume_id, pool.image_path, known.volumes):
        vol = rec.volume
        other = catalog.get_volume_by_name(vol.name)
        if other is not None:
            report.add("conflicts", f"volume {vol.id}: its name {vol.name!r} is recorded for"
                                    f" {other.id}; not adopted, image {image} left in place")
            continue
        # An expansion grows the file before the catalog: the file's size wins.
        adopted = replace(vol, capacity_bytes=max(vol.capacity_bytes, size),
                          state=VolumeState.READY)
        if apply:
            catalog.insert_volume(adopted)
            known.volumes[vol.id] = VolumeState.READY
        report.add("adopted_volumes", _describe(adopted))
    groups: dict[str, GroupSnapshot] = {}
    for srec, image, _size in adoptable(scan.snapshots, lambda r: r.snapshot.id, "snapshot",
                                        is_snapshot_id, pool.snapshot_path, known.snapshots):
        snap = srec.snapshot
        if snap.group_id and catalog.get_group(snap.group_id) is None and \
                snap.group_id not in groups:
            group = GroupSnapshot(snap.group_id, srec.group_name, srec.group_created_at,
                                  SnapshotState.READY)
            groups[snap.group_id] = group
            if apply:
                catalog.insert_group(group)
            report.add("adopted_groups", f"{group.id} name={group.name!r}")
        if catalog.get_snapshot_by_name(snap.name) is not None:
            report.add("conflicts", f"snapshot {snap.id}: its name {snap.name!r} is taken;"
                                    f" not adopted, image {image} left in place")
            continue
        if apply:
            catalog.insert_snapshot(replace(snap, state=SnapshotState.READY))
            known.snapshots[snap.id] = SnapshotState.READY
        report.add("adopted_snapshots",
                   f"{snap.id} name={snap.name!r} of={snap.source_volume_id} size={snap.size_bytes}"
                   f" fs={snap.fs_type or '-'}")


def _adoptable(items: Iterable[_R], id_of: Callable[[_R], str], kind: str,
               valid: Callable[[str], bool], image_of: Callable[[str], str],
               in_catalog: Container[str], *, records: Records, known: _Known,
               report: RebuildReport, apply: bool) -> Iterator[tuple[_R, str, int]]:
    """Each record of ``items`` that the catalog lacks (checked as it is reached),
    with its image and the image's size. Passes over a bad id (reported unreadable)
    and an image that is gone (see :func:`_image_size`); notes each record with a
    good id as sound."""
    for item in items:
        object_id = id_of(item)
        if not valid(object_id):
            report.add("unreadable_records", f"{records.path(object_id)}: bad {kind} id")
            continue
        known.good_records.add(Records.name_of(object_id))
        image = image_of(object_id)
        is_known = object_id in in_catalog
        size = _image_size(image, object_id, is_known, records, report, apply)
        if size is not None and not is_known:
            yield item, image, size


def _image_size(image: str, object_id: str, known: bool, records: Records,
                report: RebuildReport, apply: bool) -> int | None:
    """The size of a record's image, or None when it is gone: then the record is
    stale, and removed unless the catalog still has the object (reconciliation
    finishes that one)."""
    try:
        return files.file_size(image)
    except FileNotFoundError:
        report.add("stale_records", f"{records.path(object_id)} (image {image} is gone)")
        if apply and not known:
            records.remove(object_id)
        return None


def _backfill_records(catalog: Catalog, pool: Pool, records: Records, known: _Known,
                      report: RebuildReport, apply: bool, read_known: bool) -> None:
    """A pool made before images described themselves: write the missing records.
    Only the objects that need one are read from the catalog."""
    def write(object_id: str, put: Callable[[], None]) -> None:
        try:
            if apply:
                put()
            report.add("records_written", records.path(object_id))
        except OSError as exc:  # e.g. a full pool: the next start tries again
            report.add("record_errors", f"{records.path(object_id)}: {exc}")

    for vid, state in known.volumes.items():
        if state is VolumeState.READY and not known.has_record(vid, read_known) and \
                Pool.image_name(vid) in known.volume_images:
            vol = catalog.get_volume(vid)
            if vol is not None:
                write(vid, functools.partial(records.put_volume, vol))
    for sid, sstate in known.snapshots.items():
        if sstate is SnapshotState.READY and not known.has_record(sid, read_known) and \
                os.path.basename(pool.snapshot_path(sid)) in known.snapshot_images:
            snap = catalog.get_snapshot(sid)
            if snap is not None:
                group = catalog.get_group(snap.group_id) if snap.group_id else None
                write(sid, functools.partial(records.put_snapshot, snap, group))


def adopted_staging(volume_id: str, devices: list[LoopDevice], mounts: list) -> Staging:
    """The staging the kernel shows for a volume's loop devices: its writable device
    (read-only extras serve read-only block publishes), and the first filesystem
    mount of it in mount order (the staging mount comes before the binds made from
    it) or, for none, a block staging whose path the next call names."""
    device = sorted(devices, key=lambda d: (d.read_only, d.number))[0]
    fs_mounts = [m for m in mounts if m.source == device.path and
                 m.fs_type not in NODE_FS_TYPES]
    if fs_mounts:
        first = fs_mounts[0]
        return Staging(volume_id, first.mount_point, AccessType.MOUNT, first.fs_type, (),
                       first.read_only, device.path, StagingState.ADOPTED)
    return Staging(volume_id, "", AccessType.BLOCK, "", (), device.read_only, device.path,
                   StagingState.ADOPTED)


def _adopt_stagings(catalog: Catalog, pool: Pool, host: Host, attached: list[LoopDevice],
                    report: RebuildReport, apply: bool) -> None:
    by_volume: dict[str, list[LoopDevice]] = {}
    for dev in attached:
        volume_id = volume_of_device(host, pool, dev)
        if volume_id is None or dev.backing_deleted:
            continue
        by_volume.setdefault(volume_id, []).append(dev)
    if not by_volume:
        return
    mounts = host.mounts.list_mounts()
    for volume_id, devices in sorted(by_volume.items()):
        vol = catalog.get_volume(volume_id)
        if vol is None or vol.state is not VolumeState.READY or \
                catalog.get_staging(volume_id) is not None:
            continue
        staging = adopted_staging(volume_id, devices, mounts)
        if apply:
            catalog.put_staging(staging)
        report.add("adopted_stagings",
                   f"{volume_id} on {staging.device} ({staging.access_type.value}"
                   f"{' at ' + staging.staging_path if staging.staging_path else ''})")


def check_pool(pool: Pool, host: Host, *, apply: bool) -> RebuildReport:
    """What `csi-py pool check` (apply=False: reads only) and `csi-py pool rebuild`
    (apply=True) do: open the pool's catalog (rebuild moves an unreadable one
    aside; check only says so and compares with an empty catalog) and rebuild it.

    Raises PoolError (no such pool, or an unsafe one), CatalogTooNew, CatalogError
    (rebuild only: a catalog that cannot be opened or moved), OSError when the pool
    cannot be read.
    """
    if not files.is_dir(pool.root):
        raise PoolError(f"pool {pool.root} does not exist (give the driver's --pool)")
    if apply:
        pool.prepare()
        catalog, moved = open_catalog(pool, pool.release_catalog_reserve)
    else:
        moved = ""
        try:
            catalog = Catalog(pool.catalog_path) if files.exists(pool.catalog_path) \
                else Catalog(":memory:")
        except CatalogDamaged as exc:
            moved = f"(would be moved aside: {exc})"
            catalog = Catalog(":memory:")
    try:
        report = rebuild(catalog, pool, Records(pool.records_dir), host, apply=apply)
    finally:
        catalog.close()
    if moved:
        report.add("catalog_moved_to", moved)
    return report

"""Changed-block tracking (the CSI SnapshotMetadata service): which byte ranges of a
snapshot hold data, and which changed between two snapshots of one volume. Works the
same for block and filesystem volumes: both are image files in the pool, and these are
ranges of the image.

Validation happens before anything is streamed, so every error the spec defines is a
status of the call; a file that vanishes half way through a stream ends it with
FAILED_PRECONDITION. Read-only and idempotent.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from csi_py.config import Config
from csi_py.core.pool import Pool
from csi_py.core.snapshots import ready_snapshot
from csi_py.domain.errors import FailedPrecondition, InvalidArgument, OutOfRange
from csi_py.domain.errors import snapshot as snapshot_subject
from csi_py.domain.model import Snapshot
from csi_py.linux import extents
from csi_py.state.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RangeStream:
    """What a SnapshotMetadata call streams: the volume's capacity (the same in every
    message), the ranges (sorted, not overlapping, none ending before the starting
    offset) and how they were found ("allocated", "extents" or "compare")."""

    capacity_bytes: int
    ranges: Iterator[tuple[int, int]]
    method: str


class SnapshotMetadataCore:
    def __init__(self, catalog: Catalog, pool: Pool, config: Config) -> None:
        self.catalog = catalog
        self.pool = pool
        self.config = config

    def _snapshot(self, snapshot_id: str, field: str) -> Snapshot:
        return ready_snapshot(self.catalog, self.config, snapshot_id, field)

    @staticmethod
    def _check_offset(snap: Snapshot, starting_offset: int) -> None:
        if starting_offset < 0 or starting_offset > snap.size_bytes:
            raise OutOfRange(
                f"starting_offset {starting_offset} is outside it: its volume has"
                f" {snap.size_bytes} bytes", subject=snapshot_subject(snap.id))

    def _guarded(self, ranges: Iterator[tuple[int, int]], limit: int, what: str
                 ) -> Iterator[tuple[int, int]]:
        """Clip to the snapshot's capacity; a file lost mid-stream is a clear error."""
        try:
            for off, length in ranges:
                if off >= limit:
                    return
                yield off, min(length, limit - off)
        except OSError as exc:
            raise self._file_error(what, exc) from exc

    def _file_error(self, what: str, exc: OSError) -> FailedPrecondition:
        if exc.errno == errno.ENOENT:
            return FailedPrecondition(f"{what}: its image {exc.filename} is missing from"
                                      f" the pool {self.pool.root}")
        return FailedPrecondition(f"{what}: cannot read {exc.filename}: {exc.strerror}")

    def allocated(self, snapshot_id: str, starting_offset: int) -> RangeStream:
        """The allocated ranges of a snapshot from ``starting_offset``. Raises
        InvalidArgument (no id), NotFound, OutOfRange, FailedPrecondition (its image
        is gone)."""
        snap = self._snapshot(snapshot_id, "snapshot_id")
        self._check_offset(snap, starting_offset)
        what = f"snapshot {snap.id}"
        try:
            ranges = extents.allocated_ranges(self.pool.snapshot_path(snap.id),
                                              starting_offset)
        except OSError as exc:
            raise self._file_error(what, exc) from exc
        return RangeStream(snap.size_bytes, self._guarded(ranges, snap.size_bytes, what),
                           "allocated")

    def delta(self, base_id: str, target_id: str, starting_offset: int) -> RangeStream:
        """The ranges of ``target_id`` that changed since ``base_id`` (an older snapshot
        of the same volume), from ``starting_offset``. Raises InvalidArgument (missing
        ids, snapshots of different volumes, target older than base), NotFound,
        OutOfRange, FailedPrecondition (an image is gone)."""
        base = self._snapshot(base_id, "base_snapshot_id")
        target = self._snapshot(target_id, "target_snapshot_id")
        if base.source_volume_id != target.source_volume_id:
            raise InvalidArgument(
                f"snapshots {base.id} (of volume {base.source_volume_id}) and {target.id}"
                f" (of volume {target.source_volume_id}) are not of the same volume"
            )
        if target.seq < base.seq:
            raise InvalidArgument(
                f"target snapshot {target.id} was taken before base snapshot {base.id};"
                " swap them"
            )
        self._check_offset(target, starting_offset)
        what = f"snapshots {base.id}..{target.id}"
        try:
            # Extents tell only between reflinks of one volume; copies share nothing.
            delta = extents.changed_ranges(
                self.pool.snapshot_path(base.id), self.pool.snapshot_path(target.id),
                starting_offset, reflinked=base.method == target.method == "reflink")
        except OSError as exc:
            raise self._file_error(what, exc) from exc
        log.debug("delta %s by %s", what, delta.method)
        return RangeStream(target.size_bytes,
                           self._guarded(delta.ranges, target.size_bytes, what), delta.method)

"""The durable catalog: one row per volume, attachment, staging, snapshot and group.

The catalog records intent (what was asked for); the kernel is the truth for what is
attached and mounted. Every mutating operation writes its intent here first, acts, and
then commits the outcome, so a restart can finish or roll back whatever was in flight.
Connections, transactions and thread-safety: state/database.py; the tables:
state/schema.py.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from csi_py.domain.model import (
    Attachment,
    GroupSnapshot,
    Snapshot,
    SnapshotState,
    Staging,
    Volume,
    VolumeState,
)
from csi_py.state.database import Database, writes
from csi_py.state.errors import NameTaken
from csi_py.state.rows import (
    SNAPSHOT_COLUMNS,
    VOLUME_COLUMNS,
    attachment_of,
    record_row,
    snapshot_of,
    staging_of,
    volume_of,
)


class Catalog(Database):
    """Durable records of volumes, attachments, stagings, snapshots and groups. Each
    public method is one transaction (state/database.py)."""

    # --- volumes -----------------------------------------------------------------

    @writes
    def insert_volume(self, volume: Volume) -> Volume:
        """Record a new volume (normally in state CREATING) and return it with its seq.

        Not idempotent: raises NameTaken when the name or id is already recorded.
        """
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO volumes (id, name, capacity_bytes, fs_type, provisioning,"
                    " parameters, state, created_at, content_source, mutable_parameters,"
                    " block_size) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        volume.id,
                        volume.name,
                        volume.capacity_bytes,
                        volume.fs_type,
                        volume.provisioning.value,
                        json.dumps(dict(volume.parameters), sort_keys=True),
                        volume.state.value,
                        volume.created_at,
                        volume.content_source,
                        json.dumps(dict(volume.mutable_parameters), sort_keys=True),
                        volume.block_size,
                    ),
                )
                seq = cur.lastrowid
        except sqlite3.IntegrityError as exc:
            raise NameTaken(volume.name) from exc
        return replace(volume, seq=int(seq or 0))

    def _volumes(self, where: str, args: tuple[object, ...], limit: int = -1) -> list[Volume]:
        """The volumes whose rows match the SQL condition `where` (our own constant
        text; values only through `args`), in seq order, at most `limit` (-1: all).
        Read-only."""
        rows = self._query(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE {where}"
                           " ORDER BY seq LIMIT ?", (*args, limit))
        return [volume_of(r) for r in rows]

    def _snapshots(self, where: str, args: tuple[object, ...], limit: int = -1
                   ) -> list[Snapshot]:
        """The snapshots whose rows match `where`, as :meth:`_volumes`. Read-only."""
        rows = self._query(f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {where}"
                           " ORDER BY seq LIMIT ?", (*args, limit))
        return [snapshot_of(r) for r in rows]

    def get_volume(self, volume_id: str) -> Volume | None:
        """The volume with this id, or None. Read-only."""
        return next(iter(self._volumes("id=?", (volume_id,))), None)

    def get_volume_by_name(self, name: str) -> Volume | None:
        """The volume with this name, or None. Read-only."""
        return next(iter(self._volumes("name=?", (name,))), None)

    @writes
    def set_volume_state(self, volume_id: str, state: VolumeState, *,
                         durable: bool = True) -> None:
        """Move a volume to `state`. Idempotent; a missing volume is ignored.
        `durable=False`: not synced (state/database.py) where the caller can tell the
        outcome again after a power loss (core/volumes.py says when)."""
        with self._tx(durable) as db:
            db.execute("UPDATE volumes SET state=? WHERE id=?", (state.value, volume_id))

    @writes
    def set_volume_capacity(self, volume_id: str, capacity_bytes: int) -> None:
        """Record a new capacity. Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE volumes SET capacity_bytes=? WHERE id=?", (capacity_bytes, volume_id)
            )

    @writes
    def set_mutable_parameters(self, volume_id: str, values: dict[str, str]) -> None:
        """Record a volume's current mutable parameters. Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE volumes SET mutable_parameters=? WHERE id=?",
                (json.dumps(values, sort_keys=True), volume_id),
            )

    @writes
    def delete_volume(self, volume_id: str, *, durable: bool = True) -> None:
        """Forget a volume and its attachment and staging records. Idempotent.
        `durable=False` as for set_volume_state."""
        with self._tx(durable) as db:
            db.execute("DELETE FROM attachments WHERE volume_id=?", (volume_id,))
            db.execute("DELETE FROM stagings WHERE volume_id=?", (volume_id,))
            db.execute("DELETE FROM volumes WHERE id=?", (volume_id,))

    def list_volumes(self, after_seq: int, limit: int) -> list[Volume]:
        """Up to `limit` volumes with seq > after_seq, in seq order (keyset pagination,
        so deletions between pages never shift or repeat entries). Read-only."""
        return self._volumes("seq>?", (after_seq,), limit)

    def volume_states(self) -> dict[str, VolumeState]:
        """Every volume's id and state, in one query and without decoding rows: what
        start-up needs to know which records and images are already known. Read-only."""
        return {str(vid): VolumeState(state)
                for vid, state in self._query("SELECT id, state FROM volumes ORDER BY seq")}

    def volumes_in_state(self, state: VolumeState) -> list[Volume]:
        """All volumes in `state` (indexed). Read-only."""
        return self._volumes("state=?", (state.value,))

    def highest_seq_issued(self) -> int:
        """The largest seq ever handed out (survives deletions). Read-only."""
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name='volumes'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def volume_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM volumes")[0][0])  # type: ignore[call-overload]

    def snapshot_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM snapshots")[0][0])  # type: ignore[call-overload]

    def provisioned_bytes(self) -> int:
        """Sum of every recorded volume's capacity: what has been promised. Read-only."""
        rows = self._query("SELECT COALESCE(SUM(capacity_bytes),0) FROM volumes")
        return int(rows[0][0])  # type: ignore[call-overload]

    def _put(self, table: str, record: Attachment | Staging) -> None:
        """Write `record` as its row of `table`, replacing the row with its key; no
        fdatasync (see _tx: the kernel or the CO tells us these again). Idempotent.
        Raises what @writes turns into CatalogError."""
        row = record_row(record)
        with self._tx(durable=False) as db:
            db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(row)})"
                       f" VALUES ({','.join('?' * len(row))})", tuple(row.values()))

    # --- attachments ---------------------------------------------------------------

    @writes
    def put_attachment(self, attachment: Attachment) -> None:
        """Record (or replace) an attachment. Idempotent."""
        self._put("attachments", attachment)

    @writes
    def remove_attachment(self, volume_id: str, node_id: str) -> None:
        """Forget an attachment. Idempotent."""
        with self._tx(durable=False) as db:
            db.execute(
                "DELETE FROM attachments WHERE volume_id=? AND node_id=?", (volume_id, node_id)
            )

    def attachments_of(self, volume_id: str) -> list[Attachment]:
        rows = self._query(
            "SELECT * FROM attachments WHERE volume_id=? ORDER BY node_id", (volume_id,)
        )
        return [attachment_of(r) for r in rows]

    def attachments_of_many(self, volume_ids: list[str]) -> dict[str, list[Attachment]]:
        """Attachments of several volumes in one query (for ListVolumes pages)."""
        if not volume_ids:
            return {}
        marks = ",".join("?" * len(volume_ids))
        rows = self._query(
            f"SELECT * FROM attachments WHERE volume_id IN ({marks})", tuple(volume_ids)
        )
        found: dict[str, list[Attachment]] = {}
        for row in rows:
            att = attachment_of(row)
            found.setdefault(att.volume_id, []).append(att)
        return found

    def attachment_count(self, node_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM attachments WHERE node_id=?", (node_id,))
        return int(rows[0][0])  # type: ignore[call-overload]

    # --- stagings ------------------------------------------------------------------

    @writes
    def put_staging(self, staging: Staging) -> None:
        """Record (or replace) a volume's staging. Idempotent."""
        self._put("stagings", staging)

    def get_staging(self, volume_id: str) -> Staging | None:
        rows = self._query("SELECT * FROM stagings WHERE volume_id=?", (volume_id,))
        return staging_of(rows[0]) if rows else None

    @writes
    def delete_staging(self, volume_id: str) -> None:
        """Forget a staging. Idempotent."""
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM stagings WHERE volume_id=?", (volume_id,))

    def list_stagings(self) -> list[Staging]:
        return [staging_of(r) for r in self._query("SELECT * FROM stagings")]

    # --- snapshots -----------------------------------------------------------------

    @writes
    def insert_snapshot(self, snap: Snapshot) -> Snapshot:
        """Record a snapshot (normally CREATING); returns it with its seq.

        Raises NameTaken when the name or id is already recorded.
        """
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO snapshots (id, name, source_volume_id, size_bytes, created_at,"
                    " state, fs_type, method, group_id) VALUES (?,?,?,?,?,?,?,?,?)",
                    (snap.id, snap.name, snap.source_volume_id, snap.size_bytes,
                     snap.created_at, snap.state.value, snap.fs_type, snap.method,
                     snap.group_id),
                )
                seq = cur.lastrowid
        except sqlite3.IntegrityError as exc:
            raise NameTaken(snap.name) from exc
        return replace(snap, seq=int(seq or 0))

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot with this id, or None. Read-only."""
        return next(iter(self._snapshots("id=?", (snapshot_id,))), None)

    def get_snapshot_by_name(self, name: str) -> Snapshot | None:
        """The snapshot with this name, or None. Read-only."""
        return next(iter(self._snapshots("name=?", (name,))), None)

    @writes
    def update_snapshot(self, snapshot_id: str, state: SnapshotState, method: str = "") -> None:
        """Set a snapshot's state (and capture method). Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE snapshots SET state=?, method=COALESCE(NULLIF(?, ''), method)"
                " WHERE id=?",
                (state.value, method, snapshot_id),
            )

    @writes
    def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot. Idempotent."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE id=?", (snapshot_id,))

    def list_snapshots(
        self, after_seq: int, limit: int, *, source_volume_id: str = "", snapshot_id: str = ""
    ) -> list[Snapshot]:
        """Snapshots with seq > after_seq in seq order, optionally filtered (indexed)."""
        where = ["seq>?"]
        args: list[object] = [after_seq]
        if source_volume_id:
            where.append("source_volume_id=?")
            args.append(source_volume_id)
        if snapshot_id:
            where.append("id=?")
            args.append(snapshot_id)
        return self._snapshots(" AND ".join(where), tuple(args), limit)

    def snapshot_states(self) -> dict[str, SnapshotState]:
        """Every snapshot's id and state, in one query. Read-only."""
        return {str(sid): SnapshotState(state)
                for sid, state in self._query("SELECT id, state FROM snapshots ORDER BY seq")}

    def snapshots_in_state(self, state: SnapshotState) -> list[Snapshot]:
        """All snapshots in `state` (indexed), in seq order. Read-only."""
        return self._snapshots("state=?", (state.value,))

    def snapshots_of_group(self, group_id: str) -> list[Snapshot]:
        """The members of a group snapshot, in seq order. Read-only."""
        return self._snapshots("group_id=?", (group_id,))

    def highest_snapshot_seq_issued(self) -> int:
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name='snapshots'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    # --- group snapshots -----------------------------------------------------------

    def _group(self, row: tuple[object, ...]) -> GroupSnapshot:
        gid, name, created, state = row
        members = tuple(s.id for s in self.snapshots_of_group(str(gid)))
        return GroupSnapshot(str(gid), str(name), float(created),  # type: ignore[arg-type]
                             SnapshotState(state), members)

    @writes
    def insert_group(self, group: GroupSnapshot) -> None:
        """Record a group snapshot. Raises NameTaken when the name is taken."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO group_snapshots VALUES (?,?,?,?)",
                    (group.id, group.name, group.created_at, group.state.value),
                )
        except sqlite3.IntegrityError as exc:
            raise NameTaken(group.name) from exc

    @writes
    def set_group_state(self, group_id: str, state: SnapshotState) -> None:
        with self._tx() as db:
            db.execute("UPDATE group_snapshots SET state=? WHERE id=?", (state.value, group_id))

    def get_group(self, group_id: str) -> GroupSnapshot | None:
        rows = self._query("SELECT * FROM group_snapshots WHERE id=?", (group_id,))
        return self._group(rows[0]) if rows else None

    def get_group_by_name(self, name: str) -> GroupSnapshot | None:
        rows = self._query("SELECT * FROM group_snapshots WHERE name=?", (name,))
        return self._group(rows[0]) if rows else None

    def groups_in_state(self, state: SnapshotState) -> list[GroupSnapshot]:
        rows = self._query("SELECT * FROM group_snapshots WHERE state=?", (state.value,))
        return [self._group(r) for r in rows]

    @writes
    def delete_group(self, group_id: str) -> None:
        """Forget a group and its member snapshots' records. Idempotent."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM group_snapshots WHERE id=?", (group_id,))

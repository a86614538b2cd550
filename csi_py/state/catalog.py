"""The durable catalog: SQLite in WAL mode, one row per volume, attachment and staging.

The catalog records intent (what was asked for); the kernel is the truth for what is
attached and mounted. Every mutating operation writes its intent here first, acts, and
then commits the outcome, so a restart can finish or roll back whatever was in flight.

Thread-safety: each thread has its own connection to the file (made on first use). In
WAL mode a reader never waits for a writer, and no Python lock is held across a COMMIT
and its fdatasync: SQLite's own write lock (BEGIN IMMEDIATE, with a busy timeout)
orders the writers, while every other thread keeps reading. Every public method is a
single transaction. (":memory:" has one database per connection, so it keeps a single
connection behind a lock.)
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Attachment,
    GroupSnapshot,
    Provisioning,
    Snapshot,
    SnapshotState,
    Staging,
    StagingState,
    Volume,
    VolumeState,
)

# 2: volumes.block_size (rows of version 1 become 512, the size they were attached with).
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL UNIQUE,
    capacity_bytes INTEGER NOT NULL,
    fs_type        TEXT NOT NULL,
    provisioning   TEXT NOT NULL,
    parameters     TEXT NOT NULL,
    state          TEXT NOT NULL,
    created_at     REAL NOT NULL,
    content_source TEXT NOT NULL DEFAULT '',
    mutable_parameters TEXT NOT NULL DEFAULT '{}',
    block_size     INTEGER NOT NULL DEFAULT 512
);
CREATE INDEX IF NOT EXISTS volumes_state ON volumes(state);
CREATE TABLE IF NOT EXISTS snapshots (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL UNIQUE,
    source_volume_id TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    created_at       REAL NOT NULL,
    state            TEXT NOT NULL,
    fs_type          TEXT NOT NULL,
    method           TEXT NOT NULL,
    group_id         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS snapshots_source ON snapshots(source_volume_id);
CREATE INDEX IF NOT EXISTS snapshots_state ON snapshots(state);
CREATE INDEX IF NOT EXISTS snapshots_group ON snapshots(group_id);
CREATE TABLE IF NOT EXISTS group_snapshots (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    state      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    volume_id   TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    readonly    INTEGER NOT NULL,
    access_mode TEXT NOT NULL,
    access_type TEXT NOT NULL,
    PRIMARY KEY (volume_id, node_id)
);
CREATE INDEX IF NOT EXISTS attachments_node ON attachments(node_id);
CREATE TABLE IF NOT EXISTS stagings (
    volume_id    TEXT PRIMARY KEY,
    staging_path TEXT NOT NULL,
    access_type  TEXT NOT NULL,
    fs_type      TEXT NOT NULL,
    mount_flags  TEXT NOT NULL,
    readonly     INTEGER NOT NULL,
    device       TEXT NOT NULL,
    state        TEXT NOT NULL
);
"""


class CatalogError(Exception):
    """The catalog file is unusable (corrupt, unreadable, not writable); the message
    names the file and the cause."""


class CatalogDamaged(CatalogError):
    """The file is not a sound SQLite catalog (garbled, truncated, malformed): what a
    rebuild from the pool (core/rebuild.py) is for. I/O errors and a full pool are
    not damage: they are plain CatalogErrors, and the file is left as it is."""


class CatalogTooNew(CatalogError):
    """The catalog was written by a newer csi-py (a higher schema version)."""


class CatalogFull(CatalogError):
    """The pool has no space left for the catalog's writes, even after its reserve
    was given up."""


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc)


def _writes(method: Callable) -> Callable:  # type: ignore[type-arg]
    """A mutating method: when the pool is full, the catalog's reserve is given up
    (the `on_full` hook) and the transaction, which was rolled back, is tried once
    more; other SQLite failures become CatalogError naming the file."""

    @functools.wraps(method)
    def call(self: Catalog, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            # Also "disk I/O error" and "malformed" (what a failed pool answers).
            if not _is_full(exc) or not self.release_space():
                raise self._error(exc) from exc
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from exc

    return call


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced: the catalog tracks every thread's
    connection for close() without keeping a dead thread's one open."""


class NameTaken(Exception):
    """A volume with this name (or id) is already recorded."""


class Catalog:
    """Durable records of volumes, attachments and stagings."""

    def __init__(self, path: str, on_full: Callable[[], bool] | None = None) -> None:
        """Open (creating if needed) the catalog at `path`. `on_full` is called when
        a write finds the pool full; it frees space (True) or cannot (False).

        Idempotent. Raises CatalogTooNew for a schema newer than this code knows,
        CatalogError for a file that is not a sound SQLite catalog (garbled,
        truncated) or cannot be read.
        """
        self.path = path
        self._on_full = on_full
        self._local = threading.local()
        # Every thread's connection, for close(); a thread that ends drops its own.
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._all_lock = threading.Lock()  # guards _all only, never held over SQL
        self._closed = False
        self._write_lock = threading.Lock()  # BEGIN..COMMIT of this process's writers
        self._sync_lock = threading.Lock()  # one WAL fdatasync at a time (group commit)
        self._committed = 0  # commits made, numbered; under _write_lock
        self._synced = 0  # commits known on disk; under _sync_lock
        self._wal_fd: int | None = None
        # Only ":memory:" shares one connection (a second would be another database).
        self._shared_lock: threading.Lock | None = threading.Lock() \
            if path == ":memory:" else None
        # The WAL and shared-memory files are created by SQLite with the process
        # umask: owner-only like the catalog itself, from their first byte.
        old_umask = os.umask(0o077)
        try:
            try:
                self._open()
            except sqlite3.OperationalError as exc:
                # I/O errors and a full pool (creating the WAL index needs space): one
                # more try with the catalog's reserve given back to the pool.
                if not self.release_space():
                    raise CatalogError(f"cannot open catalog {path}: {exc}") from exc
                try:
                    self._open()
                except sqlite3.OperationalError as again:
                    raise CatalogError(f"cannot open catalog {path}: {again}") from again
        except sqlite3.DatabaseError as exc:  # "not a database", "malformed"
            raise CatalogDamaged(f"catalog {path} is damaged: {exc}") from exc
        finally:
            os.umask(old_umask)
        if path != ":memory:":
            for name in (path, path + "-wal", path + "-shm"):
                try:
                    os.chmod(name, 0o600)
                except FileNotFoundError:
                    pass

    def _connect(self) -> _Connection:
        try:
            # timeout: how long BEGIN IMMEDIATE waits for another thread's write
            # transaction (its commit's fdatasync included) before "database is locked".
            return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=60.0, factory=_Connection)
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc

    def _open(self) -> None:
        """Connect and check the file; on failure nothing stays open. Raises
        sqlite3 errors, CatalogDamaged, CatalogTooNew."""
        self._db = self._connect()
        # The opening thread keeps the checked connection; others make their own.
        self._local.db = self._db
        try:
            self._check_and_migrate()
        except BaseException:
            self._local.db = None
            self._db.close()
            raise
        self._all.add(self._db)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, made (WAL, foreign keys) on first use. Raises
        CatalogError when the catalog is closed or cannot be opened."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and not self._closed:
            return db
        with self._all_lock:
            if self._closed:
                raise CatalogError(f"catalog {self.path} is closed")
            db = self._connect()
            self._all.add(db)
        try:
            # journal_mode is the file's (set at open); the others are per connection.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from exc
        self._local.db = db
        return db

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        if self._shared_lock is None:
            yield self._conn()
            return
        with self._shared_lock:
            yield self._conn()

    def _check_and_migrate(self) -> None:
        path = self.path
        self._db.execute("PRAGMA journal_mode=WAL")
        # A durable commit is on disk before we act on it, so power loss cannot leave
        # a backing file the catalog has never heard of. NORMAL: SQLite writes the
        # WAL without syncing it at COMMIT; _tx syncs it (group commit) before a
        # durable commit returns. Checkpoints still sync the WAL before and the
        # database after copying.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # A truncated or partly overwritten file may still open; a quick check
        # (milliseconds for a catalog) finds it before any call trusts it.
        check = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise CatalogDamaged(f"catalog {path} is damaged: {check}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CatalogTooNew(
                f"catalog {path} has schema version {version}; this csi-py knows "
                f"{SCHEMA_VERSION}. Upgrade csi-py or restore a backup."
            )
        if version == SCHEMA_VERSION:
            return  # nothing to write: a full pool still opens
        with self._tx() as db:
            if version == 1:
                # Every volume of a version 1 catalog was attached with 512-byte blocks.
                db.execute("ALTER TABLE volumes ADD COLUMN block_size INTEGER NOT NULL"
                           " DEFAULT 512")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def release_space(self) -> bool:
        """Ask the `on_full` hook to free pool space for a write. True if it did."""
        return bool(self._on_full and self._on_full())

    def _error(self, exc: sqlite3.Error) -> CatalogError:
        if _is_full(exc):
            return CatalogFull(f"catalog {self.path}: the pool is full ({exc}); free space"
                               " in the pool")
        return CatalogError(f"catalog {self.path}: {exc}")

    def close(self) -> None:
        """Close the connection. Idempotent; never raises (on a failed pool the
        final checkpoint fails, and the WAL keeps what it holds)."""
        with self._all_lock:
            self._closed = True
            conns = list(self._all)
            self._all.clear()
        for db in conns:
            try:
                db.close()
            except sqlite3.Error:
                pass
        with self._sync_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. `durable`: its commit is on disk before it returns (an
        fdatasync of the WAL). Records the kernel can tell us again after a power loss
        (stagings) or that the CO re-sends (attachments) commit without one; the
        next durable commit carries them to disk too. A process crash loses
        neither: WAL commits are atomic.

        The write lock (a Python lock, so a waiting writer wakes at once instead of
        polling SQLite's busy handler) is held from BEGIN to COMMIT only. The COMMIT
        itself runs with synchronous=NORMAL, which writes the WAL frames but does not
        sync them; the fdatasync that makes a durable commit durable happens after the
        lock is released, as a group commit (_sync_through): one fdatasync covers
        every commit made before it started, so concurrent RPCs share it instead of
        queueing one disk flush each behind the lock. Readers take no lock at all."""
        with self._using() as db, self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._committed += 1
            mine = self._committed
        if durable and self._shared_lock is None:  # ":memory:" has nothing to sync
            self._sync_through(mine)

    def _sync_through(self, commit: int) -> None:
        """Return once commit number `commit` (and all before it) is on disk. Raises
        CatalogError when the WAL cannot be synced (then nothing is claimed durable)."""
        with self._sync_lock:
            if self._synced >= commit:
                return  # a flush that started after our COMMIT covered it
            target = self._committed  # every commit so far is in the WAL file
            try:
                if self._wal_fd is None:
                    self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
                os.fdatasync(self._wal_fd)
            except OSError as exc:
                raise CatalogError(f"catalog {self.path}: cannot sync its WAL: {exc}"
                                   ) from exc
            self._synced = target

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Rows of one read. Raises CatalogError when SQLite cannot read (EIO on a
        failed pool, a damaged page). Takes no lock: in WAL mode a read sees the
        last commit and never waits for a writer."""
        with self._using() as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from exc

    # --- volumes -----------------------------------------------------------------

    _VOLUME_COLUMNS = (
        "seq, id, name, capacity_bytes, fs_type, provisioning, parameters, state, created_at,"
        " content_source, mutable_parameters, block_size"
    )

    @staticmethod
    def _volume(row: tuple[object, ...]) -> Volume:
        seq, vid, name, cap, fs, prov, params, state, created, source, mutable, bs = row
        return Volume(
            id=str(vid),
            name=str(name),
            capacity_bytes=int(cap),  # type: ignore[call-overload]
            fs_type=str(fs),
            provisioning=Provisioning(prov),
            parameters=tuple(sorted(json.loads(str(params)).items())),
            state=VolumeState(state),
            created_at=float(created),  # type: ignore[arg-type]
            seq=int(seq),  # type: ignore[call-overload]
            content_source=str(source),
            mutable_parameters=tuple(sorted(json.loads(str(mutable)).items())),
            block_size=int(bs),  # type: ignore[call-overload]
        )

    @_writes
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

    def get_volume(self, volume_id: str) -> Volume | None:
        """The volume with this id, or None. Read-only."""
        rows = self._query(f"SELECT {self._VOLUME_COLUMNS} FROM volumes WHERE id=?", (volume_id,))
        return self._volume(rows[0]) if rows else None

    def get_volume_by_name(self, name: str) -> Volume | None:
        """The volume with this name, or None. Read-only."""
        rows = self._query(f"SELECT {self._VOLUME_COLUMNS} FROM volumes WHERE name=?", (name,))
        return self._volume(rows[0]) if rows else None

    @_writes
    def set_volume_state(self, volume_id: str, state: VolumeState) -> None:
        """Move a volume to `state`. Idempotent; a missing volume is ignored."""
        with self._tx() as db:
            db.execute("UPDATE volumes SET state=? WHERE id=?", (state.value, volume_id))

    @_writes
    def set_volume_capacity(self, volume_id: str, capacity_bytes: int) -> None:
        """Record a new capacity. Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE volumes SET capacity_bytes=? WHERE id=?", (capacity_bytes, volume_id)
            )

    @_writes
    def set_mutable_parameters(self, volume_id: str, values: dict[str, str]) -> None:
        """Record a volume's current mutable parameters. Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE volumes SET mutable_parameters=? WHERE id=?",
                (json.dumps(values, sort_keys=True), volume_id),
            )

    @_writes
    def delete_volume(self, volume_id: str) -> None:
        """Forget a volume and its attachment and staging records. Idempotent."""
        with self._tx() as db:
            db.execute("DELETE FROM attachments WHERE volume_id=?", (volume_id,))
            db.execute("DELETE FROM stagings WHERE volume_id=?", (volume_id,))
            db.execute("DELETE FROM volumes WHERE id=?", (volume_id,))

    def list_volumes(self, after_seq: int, limit: int) -> list[Volume]:
        """Up to `limit` volumes with seq > after_seq, in seq order (keyset pagination,
        so deletions between pages never shift or repeat entries). Read-only."""
        rows = self._query(
            f"SELECT {self._VOLUME_COLUMNS} FROM volumes WHERE seq>? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [self._volume(r) for r in rows]

    def volume_states(self) -> dict[str, VolumeState]:
        """Every volume's id and state, in one query and without decoding rows: what
        start-up needs to know which records and images are already known. Read-only."""
        return {str(vid): VolumeState(state)
                for vid, state in self._query("SELECT id, state FROM volumes ORDER BY seq")}

    def volumes_in_state(self, state: VolumeState) -> list[Volume]:
        """All volumes in `state` (indexed). Read-only."""
        rows = self._query(
            f"SELECT {self._VOLUME_COLUMNS} FROM volumes WHERE state=? ORDER BY seq",
            (state.value,),
        )
        return [self._volume(r) for r in rows]

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

    # --- attachments ---------------------------------------------------------------

    @staticmethod
    def _attachment(row: tuple[object, ...]) -> Attachment:
        vid, node, ro, mode, atype = row
        return Attachment(
            volume_id=str(vid),
            node_id=str(node),
            readonly=bool(ro),
            access_mode=AccessMode(mode),
            access_type=AccessType(atype),
        )

    @_writes
    def put_attachment(self, attachment: Attachment) -> None:
        """Record (or replace) an attachment. Idempotent."""
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO attachments VALUES (?,?,?,?,?)",
                (
                    attachment.volume_id,
                    attachment.node_id,
                    int(attachment.readonly),
                    attachment.access_mode.value,
                    attachment.access_type.value,
                ),
            )

    @_writes
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
        return [self._attachment(r) for r in rows]

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
            att = self._attachment(row)
            found.setdefault(att.volume_id, []).append(att)
        return found

    def attachment_count(self, node_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM attachments WHERE node_id=?", (node_id,))
        return int(rows[0][0])  # type: ignore[call-overload]

    # --- stagings ------------------------------------------------------------------

    @staticmethod
    def _staging(row: tuple[object, ...]) -> Staging:
        vid, path, atype, fs, flags, ro, device, state = row
        return Staging(
            volume_id=str(vid),
            staging_path=str(path),
            access_type=AccessType(atype),
            fs_type=str(fs),
            mount_flags=tuple(json.loads(str(flags))),
            readonly=bool(ro),
            device=str(device),
            state=StagingState(state),
        )

    @_writes
    def put_staging(self, staging: Staging) -> None:
        """Record (or replace) a volume's staging. Idempotent."""
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO stagings VALUES (?,?,?,?,?,?,?,?)",
                (
                    staging.volume_id,
                    staging.staging_path,
                    staging.access_type.value,
                    staging.fs_type,
                    json.dumps(list(staging.mount_flags)),
                    int(staging.readonly),
                    staging.device,
                    staging.state.value,
                ),
            )

    def get_staging(self, volume_id: str) -> Staging | None:
        rows = self._query("SELECT * FROM stagings WHERE volume_id=?", (volume_id,))
        return self._staging(rows[0]) if rows else None

    @_writes
    def delete_staging(self, volume_id: str) -> None:
        """Forget a staging. Idempotent."""
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM stagings WHERE volume_id=?", (volume_id,))

    def list_stagings(self) -> list[Staging]:
        return [self._staging(r) for r in self._query("SELECT * FROM stagings")]

    # --- snapshots -----------------------------------------------------------------

    _SNAPSHOT_COLUMNS = (
        "seq, id, name, source_volume_id, size_bytes, created_at, state, fs_type, method, group_id"
    )

    @staticmethod
    def _snapshot(row: tuple[object, ...]) -> Snapshot:
        seq, sid, name, source, size, created, state, fs, method, group = row
        return Snapshot(
            id=str(sid),
            name=str(name),
            source_volume_id=str(source),
            size_bytes=int(size),  # type: ignore[call-overload]
            created_at=float(created),  # type: ignore[arg-type]
            state=SnapshotState(state),
            fs_type=str(fs),
            method=str(method),
            group_id=str(group),
            seq=int(seq),  # type: ignore[call-overload]
        )

    @_writes
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
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE id=?", (snapshot_id,)
        )
        return self._snapshot(rows[0]) if rows else None

    def get_snapshot_by_name(self, name: str) -> Snapshot | None:
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE name=?", (name,)
        )
        return self._snapshot(rows[0]) if rows else None

    @_writes
    def update_snapshot(self, snapshot_id: str, state: SnapshotState, method: str = "") -> None:
        """Set a snapshot's state (and capture method). Idempotent."""
        with self._tx() as db:
            db.execute(
                "UPDATE snapshots SET state=?, method=COALESCE(NULLIF(?, ''), method)"
                " WHERE id=?",
                (state.value, method, snapshot_id),
            )

    @_writes
    def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot. Idempotent."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE id=?", (snapshot_id,))

    def list_snapshots(
        self, after_seq: int, limit: int, *, source_volume_id: str = "", snapshot_id: str = ""
    ) -> list[Snapshot]:
        """Snapshots with seq > after_seq in seq order, optionally filtered (indexed)."""
        where, args = ["seq>?"], [after_seq]
        if source_volume_id:
            where.append("source_volume_id=?")
            args.append(source_volume_id)  # type: ignore[arg-type]
        if snapshot_id:
            where.append("id=?")
            args.append(snapshot_id)  # type: ignore[arg-type]
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE {' AND '.join(where)}"
            " ORDER BY seq LIMIT ?",
            (*args, limit),
        )
        return [self._snapshot(r) for r in rows]

    def snapshot_states(self) -> dict[str, SnapshotState]:
        """Every snapshot's id and state, in one query. Read-only."""
        return {str(sid): SnapshotState(state)
                for sid, state in self._query("SELECT id, state FROM snapshots ORDER BY seq")}

    def snapshots_in_state(self, state: SnapshotState) -> list[Snapshot]:
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE state=? ORDER BY seq",
            (state.value,),
        )
        return [self._snapshot(r) for r in rows]

    def snapshots_of_group(self, group_id: str) -> list[Snapshot]:
        rows = self._query(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE group_id=? ORDER BY seq",
            (group_id,),
        )
        return [self._snapshot(r) for r in rows]

    def highest_snapshot_seq_issued(self) -> int:
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name='snapshots'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    # --- group snapshots -----------------------------------------------------------

    def _group(self, row: tuple[object, ...]) -> GroupSnapshot:
        gid, name, created, state = row
        members = tuple(s.id for s in self.snapshots_of_group(str(gid)))
        return GroupSnapshot(str(gid), str(name), float(created),  # type: ignore[arg-type]
                             SnapshotState(state), members)

    @_writes
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

    @_writes
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

    @_writes
    def delete_group(self, group_id: str) -> None:
        """Forget a group and its member snapshots' records. Idempotent."""
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM group_snapshots WHERE id=?", (group_id,))

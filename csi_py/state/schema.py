"""The catalog's SQLite schema, its version, and the checks and migration run when a
catalog file is opened."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

from csi_py.state.errors import CatalogDamaged, CatalogTooNew

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


def check_and_migrate(db: sqlite3.Connection, path: str,
                      tx: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
    """Set the connection's journal mode, check the file and bring its schema to
    SCHEMA_VERSION (in one transaction from `tx`). Writes nothing when the schema is
    current, so a full pool still opens. Raises CatalogDamaged (a file that fails
    SQLite's quick check), CatalogTooNew, sqlite3 errors."""
    db.execute("PRAGMA journal_mode=WAL")
    # A durable commit is on disk before we act on it, so power loss cannot leave
    # a backing file the catalog has never heard of. NORMAL: SQLite writes the
    # WAL without syncing it at COMMIT; Database._tx syncs it (group commit) before a
    # durable commit returns. Checkpoints still sync the WAL before and the
    # database after copying.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    # A truncated or partly overwritten file may still open; a quick check
    # (milliseconds for a catalog) finds it before any call trusts it.
    check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    if check != "ok":
        raise CatalogDamaged(f"catalog {path} is damaged: {check}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogTooNew(
            f"catalog {path} has schema version {version}; this csi-py knows "
            f"{SCHEMA_VERSION}. Upgrade csi-py or restore a backup."
        )
    if version == SCHEMA_VERSION:
        return  # nothing to write: a full pool still opens
    with tx() as db:
        if version == 1:
            # Every volume of a version 1 catalog was attached with 512-byte blocks.
            db.execute("ALTER TABLE volumes ADD COLUMN block_size INTEGER NOT NULL"
                       " DEFAULT 512")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

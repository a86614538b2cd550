"""The catalog's database: one SQLite file in WAL mode, its connections and transactions.

Thread-safety: each thread has its own connection to the file (made on first use). In
WAL mode a reader never waits for a writer, and no Python lock is held across a COMMIT
and its fdatasync: SQLite's own write lock (BEGIN IMMEDIATE, with a busy timeout)
orders the writers, while every other thread keeps reading. Every public method is a
single transaction. (":memory:" has one database per connection, so it keeps a single
connection behind a lock.)
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from csi_py.linux import files
from csi_py.state.errors import CatalogDamaged, CatalogError, CatalogFull
from csi_py.state.schema import check_and_migrate


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc)


def writes(method: Callable) -> Callable:  # type: ignore[type-arg]
    """A mutating method: when the pool is full, the catalog's reserve is given up
    (the `on_full` hook) and the transaction, which was rolled back, is tried once
    more; other SQLite failures become CatalogError naming the file."""

    @functools.wraps(method)
    def call(self: Database, *args, **kwargs):  # type: ignore[no-untyped-def]
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


class Database:
    """One SQLite file in WAL mode: connections per thread, transactions with group
    commit, reads without locks. Catalog adds the records on top."""

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
        with files.umask(0o077):
            self._open_once_more_when_full()
        if path != ":memory:":
            for name in (path, path + "-wal", path + "-shm"):
                files.chmod_if_present(name, 0o600)

    def _open_once_more_when_full(self) -> None:
        """_open(), retried once with the catalog's reserve given back to the pool.
        Raises CatalogError, CatalogDamaged, CatalogTooNew."""
        path = self.path
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
        check_and_migrate(self._db, self.path, self._tx)

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
                files.close_fd(self._wal_fd)
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
                    self._wal_fd = files.open_read_only(self.path + "-wal")
                files.datasync(self._wal_fd)
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

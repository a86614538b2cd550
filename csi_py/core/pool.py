"""The pool directory's layout. Every path the driver builds comes from here, from the
pool root and a validated id, never from a raw request string."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import overload

from csi_py.core.validation import is_volume_id
from csi_py.domain.errors import InvalidArgument, snapshot, volume
from csi_py.domain.snapshot_ids import file_key, is_snapshot_id
from csi_py.linux import files

# Pool space held back for the catalog: thin volumes can fill the pool with their
# writes, and then the catalog could not record even the calls that free space
# (unstage, delete). This much is released when a catalog write finds the pool full
# (Catalog's on_full hook) and allocated again as soon as the pool has room.
CATALOG_RESERVE_BYTES = 8 << 20


class PoolError(Exception):
    """The pool directory is unsafe or unusable; the message says why."""


class Entry:
    """A fixed name in the pool root, read on a Pool as its full path (a table row of
    the layout below). Pure."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    @overload
    def __get__(self, pool: None, owner: type) -> Entry: ...
    @overload
    def __get__(self, pool: Pool, owner: type) -> str: ...
    def __get__(self, pool: Pool | None, owner: type) -> Entry | str:
        return self if pool is None else os.path.join(pool.root, self.name)


@dataclass(frozen=True)
class Pool:
    """The pool at `root`: the paths of its entries and of each volume's and
    snapshot's image, and the checks that keep it safe."""

    root: str

    volumes_dir = Entry("volumes", "The volumes' images, <volume id>.img.")
    snapshots_dir = Entry("snapshots", "The snapshots' images, snap-<hex>.img.")
    records_dir = Entry("records", "Where each image's self-describing record lives"
                                   " (state/records.py).")
    ephemeral_dir = Entry("ephemeral", "Where the driver stages inline ephemeral volumes"
                                       " (core/ephemeral.py).")
    catalog_path = Entry("catalog.db", "The catalog (state/catalog.py).")
    catalog_reserve_path = Entry("catalog.reserve", "The space held back for the catalog"
                                                    " (CATALOG_RESERVE_BYTES).")

    def snapshot_path(self, snapshot_id: str) -> str:
        """The image file of a snapshot, named by its key alone (`snap-<hex>`): the
        node part of an id never becomes a path. Raises InvalidArgument for a malformed
        id."""
        if not is_snapshot_id(snapshot_id):
            raise InvalidArgument("the id is malformed", subject=snapshot(snapshot_id))
        return os.path.join(self.snapshots_dir, file_key(snapshot_id) + ".img")

    def contains(self, path: str) -> bool:
        """Whether `path` (resolved) is the pool root or anything below it, other
        than the driver's own staging places below ephemeral/: a mount there would
        hide the catalog, the images or their records. Never raises."""
        real = files.resolve(path)
        root = files.resolve(self.root).rstrip("/")
        if real != root and not real.startswith(root + "/"):
            return False
        return not real.startswith(os.path.join(root, Pool.ephemeral_dir.name) + "/")

    def keep_catalog_reserve(self) -> bool:
        """Allocate the catalog's reserve file if it is missing. Best effort (False
        when the pool has no room for it now). Idempotent."""
        if files.exists(self.catalog_reserve_path):
            return True
        try:
            files.create_image(self.catalog_reserve_path, CATALOG_RESERVE_BYTES,
                               preallocate=True)
        except FileExistsError:
            pass
        except OSError:
            return False
        return True

    def release_catalog_reserve(self) -> bool:
        """Give the reserve's space back to the pool. True if there was one to free."""
        return files.remove_if_present(self.catalog_reserve_path)

    def image_path(self, volume_id: str) -> str:
        """The backing file of a volume. Raises InvalidArgument for a malformed id."""
        if not is_volume_id(volume_id):
            raise InvalidArgument("the id is malformed", subject=volume(volume_id))
        return os.path.join(self.volumes_dir, volume_id + ".img")

    @staticmethod
    def image_name(volume_id: str) -> str:
        """The file name (no directory) of a volume's backing file; the id unchecked."""
        return volume_id + ".img"

    @staticmethod
    def volume_id_of_name(name: str) -> str | None:
        """The volume id whose backing file in volumes_dir is called `name`, or None."""
        if not name.endswith(".img"):
            return None
        candidate = name[: -len(".img")]
        return candidate if is_volume_id(candidate) else None

    def volume_id_of_image(self, path: str) -> str | None:
        """The volume id whose backing file is `path`, or None if `path` is not one."""
        if os.path.dirname(path) != self.volumes_dir or not path.endswith(".img"):
            return None
        candidate = os.path.basename(path)[: -len(".img")]
        return candidate if is_volume_id(candidate) else None

    def prepare(self) -> None:
        """Create the layout (mode 0700) and refuse an unsafe pool. Idempotent.

        Raises PoolError when the pool is a symlink, not a directory, or writable by
        users other than its owner: any of those would let someone else swap a backing
        file under a mounted volume.
        """
        files.make_private_dir(self.root)
        st = files.lstat(self.root)
        if stat.S_ISLNK(st.st_mode):
            raise PoolError(f"pool {self.root} is a symlink; give the real directory")
        if not stat.S_ISDIR(st.st_mode):
            raise PoolError(f"pool {self.root} is not a directory")
        if st.st_mode & 0o022:
            raise PoolError(
                f"pool {self.root} is writable by group or others (mode {st.st_mode & 0o777:o});"
                f" run chmod go-w {self.root}"
            )
        if files.resolve(self.root) != self.root:
            raise PoolError(
                f"pool {self.root} resolves to {files.resolve(self.root)}; give that path"
            )
        files.make_private_dir(self.volumes_dir)
        files.make_private_dir(self.snapshots_dir)
        try:
            files.make_private_dir(self.records_dir)
        except OSError as exc:
            # A pool from before records, started while full: the reserve pays.
            if exc.errno != errno.ENOSPC or not self.release_catalog_reserve():
                raise
            files.make_private_dir(self.records_dir)

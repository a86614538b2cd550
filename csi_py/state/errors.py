"""The catalog's errors: what a caller of state/ can catch, without SQLite's types."""

from __future__ import annotations


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


class NameTaken(Exception):
    """A volume with this name (or id) is already recorded."""

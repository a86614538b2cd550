"""Per-key try-locks: a second concurrent operation on the same volume gets Aborted.

The CSI spec asks plugins to answer ABORTED when an operation is already pending for a
volume, and the sidecars retry with back-off; blocking instead would pile up threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from csi_py.domain.errors import Aborted, Subject

# What a key that is an id names, by the id's prefix (the ids this driver issues).
_KINDS = (("vol-", "volume"), ("snap-", "snapshot"), ("group-", "group snapshot"))


def subject_of_key(key: str) -> Subject:
    """The subject of an id used as a key: a volume, snapshot or group snapshot. Any
    other key is internal and never shown (its Subject is only "the object")."""
    kind = next((k for prefix, k in _KINDS if key.startswith(prefix)), "")
    return Subject(kind, id=key) if kind else Subject("the object")


class KeyedTryLock:
    """A set of busy keys. Thread-safe; holding costs one dict entry per busy key."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: dict[str, str] = {}

    @contextmanager
    def hold(self, key: str, operation: str, subject: Subject | None = None
             ) -> Iterator[None]:
        """Hold `key` for the duration of the block. `subject` is what an error names
        (by default the volume, snapshot or group the key's id names): keys are
        internal ("name:<name>" for a name being created) and never shown.

        Raises Aborted at once (never waits) when another operation holds the key.
        """
        with self._guard:
            current = self._busy.get(key)
            if current is not None:
                raise Aborted(f"an operation ({current}) is already in progress; retry later",
                              subject=subject or subject_of_key(key))
            self._busy[key] = operation
        try:
            yield
        finally:
            with self._guard:
                self._busy.pop(key, None)

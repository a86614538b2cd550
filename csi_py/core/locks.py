"""Per-key try-locks: a second concurrent operation on the same volume gets Aborted.

The CSI spec asks plugins to answer ABORTED when an operation is already pending for a
volume, and the sidecars retry with back-off; blocking instead would pile up threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from csi_py.domain.errors import Aborted


class KeyedTryLock:
    """A set of busy keys. Thread-safe; holding costs one dict entry per busy key."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: dict[str, str] = {}

    @contextmanager
    def hold(self, key: str, operation: str) -> Iterator[None]:
        """Hold `key` for the duration of the block.

        Raises Aborted at once (never waits) when another operation holds the key.
        """
        with self._guard:
            current = self._busy.get(key)
            if current is not None:
                raise Aborted(
                    f"{key}: an operation ({current}) is already in progress; retry later"
                )
            self._busy[key] = operation
        try:
            yield
        finally:
            with self._guard:
                self._busy.pop(key, None)

    def busy(self) -> dict[str, str]:
        """A snapshot of the keys held now and their operations (for diagnostics)."""
        with self._guard:
            return dict(self._busy)

"""Writes that tell whether a real filesystem is frozen: a write under a frozen mount
blocks until the thaw, so a test starts one in a thread and sees whether it finishes.

One WriteProbes per test: it remembers every write it started, so a test can wait for
the blocked ones to finish (none may keep a file open when the test unmounts).
"""

from __future__ import annotations

import os
import threading

from tests.kernel_leaks import mounts_under

# How long a thawed filesystem may take to let a write through on a loaded machine.
THAW_WAIT = 30.0


class WriteProbes:
    """The writes one test started. Not thread-safe (one test drives it)."""

    def __init__(self) -> None:
        self.writes: list[threading.Event] = []

    def start(self, path: str, data: bytes = b"written\n") -> threading.Event:
        """Append ``data`` to ``path`` from another thread; the event is set when the
        write is done and the file closed."""
        done = threading.Event()

        def write() -> None:
            with open(path, "ab") as f:
                f.write(data)
            done.set()

        self.writes.append(done)
        threading.Thread(target=write, daemon=True).start()
        return done

    def blocked(self, mnt: str, wait: float = 0.5) -> bool:
        """Whether a write of a new file under ``mnt`` stays blocked for ``wait``
        seconds (if it does, it finishes at the thaw)."""
        return not self.start(self._new_file(mnt)).wait(wait)

    def go_through(self, mnt: str) -> bool:
        """Whether a write of a new file under ``mnt`` finishes, and so has every write
        started before, each within THAW_WAIT."""
        self.start(self._new_file(mnt))
        return self.finished(THAW_WAIT)

    def finished(self, timeout: float) -> bool:
        """Whether every write started so far finishes, each within ``timeout``."""
        return all(done.wait(timeout) for done in self.writes)

    def _new_file(self, mnt: str) -> str:
        return os.path.join(mnt, f"probe-{len(self.writes)}")


def thaw_and_finish(kit, root: str, probes: WriteProbes, timeout: float = 10.0) -> None:
    """Thaw every mount below ``root`` (a test's own directory) and let the test's
    blocked writes finish: run before the kit's cleanup, since a frozen filesystem
    outlives its unmount and keeps its loop device busy, and a blocked write keeps a
    file open. Idempotent; raises only OSError, when /proc/self/mountinfo cannot be
    read (a thaw that fails is passed over)."""
    for point in mounts_under(os.path.realpath(root)):
        try:
            kit.fs.thaw(point)
        except Exception:
            pass  # not frozen, or not freezable: nothing to thaw
    probes.finished(timeout)

"""This process itself, as the kernel sees it: its privilege, and ending it at once."""

from __future__ import annotations

import os
import signal


def kill_self() -> None:
    """SIGKILL this process: no cleanup, no atexit, no flush, as a power cut or an OOM
    kill would end it (the crash-safety tests' crash points). Does not return."""
    os.kill(os.getpid(), signal.SIGKILL)


def is_root() -> bool:
    """Whether this process runs as root (effective uid 0). Never raises."""
    return os.geteuid() == 0

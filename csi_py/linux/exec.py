"""The only place in csi-py that starts another program.

Rules for a tool (:func:`run`): an argument list, never a shell; a timeout; a fixed,
small environment with ``LC_ALL=C`` so tool messages are in English and parseable;
stdin closed unless input is given; stdout and stderr captured so a failure can say
what the tool said. A long-running child (:func:`spawn`, the demo's driver) gets an
argument list too, and is stopped by its caller.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Collection, Sequence

from csi_py.linux.errors import CommandError, ToolMissing

# Tools like mkfs.*, blkid and resize2fs live in sbin directories that are often not
# on a service's PATH.
_EXTRA_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _search_path() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for extra in _EXTRA_DIRS:
        if extra not in dirs:
            dirs.append(extra)
    return os.pathsep.join(dirs)


def find_tool(name: str) -> str | None:
    """Absolute path of the executable ``name`` on PATH, /sbin or /usr/sbin, else None.

    A name containing a slash is checked as given. Idempotent, never raises.
    """
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=_search_path())


def run(
    argv: Sequence[str],
    *,
    timeout: float = 120.0,
    input: bytes | None = None,
    ok_returncodes: Collection[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process (stdout/stderr as bytes).

    ``argv[0]`` is resolved with :func:`find_tool`; the child gets only ``PATH`` and
    ``LC_ALL=C`` as environment. ``ok_returncodes`` lists the exit codes that count as
    success (some tools use exit codes for answers, e.g. ``blkid`` exits 2 for
    "nothing found").

    Raises ToolMissing if the tool is not installed, CommandError on any other exit
    code or when ``timeout`` expires (the child is killed; ``returncode`` is None).
    Whether calling it twice is safe depends on the command.
    """
    if not argv:
        raise ValueError("run() needs a non-empty argument list")
    exe = find_tool(argv[0])
    if exe is None:
        raise ToolMissing(argv[0])
    full = [exe, *argv[1:]]
    env = {"PATH": _search_path(), "LC_ALL": "C", "LANG": "C"}
    try:
        proc = subprocess.run(
            full,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            list(argv),
            None,
            exc.stderr or b"",
            stdout=exc.stdout or b"",
            timed_out=True,
            hint=f"killed after {timeout:g}s",
        ) from None
    except FileNotFoundError:
        # Removed between find_tool() and exec.
        raise ToolMissing(argv[0]) from None
    if proc.returncode not in ok_returncodes:
        raise CommandError(list(argv), proc.returncode, proc.stderr, stdout=proc.stdout)
    return proc


class Child:
    """A program started by :func:`spawn`, running until :meth:`stop`."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds; waits for
        it and returns its exit status. Idempotent: a child that has exited already is
        only reaped. Never raises for a child that is gone."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return self._proc.wait()


def spawn(argv: Sequence[str]) -> Child:
    """Start ``argv`` (an argument list, no shell) as a child that keeps this process's
    environment, stdin, stdout and stderr, so what it prints reaches the user as its
    own. Unlike :func:`run` there is no timeout: the caller ends it with
    :meth:`Child.stop`. Raises OSError if it cannot be started."""
    if not argv:
        raise ValueError("spawn() needs a non-empty argument list")
    return Child(subprocess.Popen(list(argv), close_fds=True))

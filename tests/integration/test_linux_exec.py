"""The subprocess runner: no shell, fixed environment, typed errors; and the long-running
child that spawn() starts and Child.stop() ends."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from csi_py.linux.errors import CommandError, ToolMissing
from csi_py.linux.exec import find_tool, run, spawn

pytestmark = pytest.mark.integration


def test_run_captures_output():
    proc = run(["echo", "hello", "$HOME", "; rm -rf /"])
    assert proc.stdout == b"hello $HOME ; rm -rf /\n"  # arguments, not a shell line
    assert proc.returncode == 0


def test_run_environment_is_fixed(monkeypatch):
    monkeypatch.setenv("CSI_SECRET_TOKEN", "s3cr3t")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    env = dict(
        line.split("=", 1) for line in run(["env"]).stdout.decode().splitlines() if "=" in line
    )
    assert env["LC_ALL"] == "C"
    assert "CSI_SECRET_TOKEN" not in env
    assert "/usr/sbin" in env["PATH"].split(os.pathsep)


def test_run_stdin_closed_and_input():
    assert run(["cat"]).stdout == b""  # /dev/null, does not hang
    assert run(["cat"], input=b"data").stdout == b"data"


def test_run_nonzero_exit():
    with pytest.raises(CommandError) as exc:
        run(["sh", "-c", "echo oops >&2; echo more >&2; exit 3"])
    err = exc.value
    assert err.returncode == 3
    assert "oops" in err.stderr
    assert "sh exited with code 3" in str(err) and "more" in str(err)
    assert err.argv[0] == "sh"


def test_run_ok_returncodes():
    assert run(["sh", "-c", "exit 2"], ok_returncodes=(0, 2)).returncode == 2


def test_run_timeout_kills():
    with pytest.raises(CommandError) as exc:
        run(["sleep", "30"], timeout=0.2)
    assert exc.value.timed_out and exc.value.returncode is None
    assert "timed out" in str(exc.value) and "0.2s" in str(exc.value)


def test_tool_missing():
    with pytest.raises(ToolMissing) as exc:
        run(["csipy-no-such-tool"])
    assert exc.value.tool == "csipy-no-such-tool"
    assert find_tool("csipy-no-such-tool") is None


def test_find_tool_sbin(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_tool("mkfs.ext4") in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4")
    assert find_tool("/bin/sh") == "/bin/sh"
    assert find_tool("/nonexistent/sh") is None


def test_run_empty_argv():
    with pytest.raises(ValueError):
        run([])


def _spawn_ready(tmp_path, setup: str, report: str = "''"):
    """spawn() a Python child that runs `setup`, writes `report` (an expression) to a
    file and sleeps; returns it once the file is there, so the test's signal cannot
    arrive before `setup` ran, and the file's path."""
    ready = tmp_path / "ready"
    child = spawn([sys.executable, "-c",
                   f"import os, signal, sys, time\n{setup}\n"
                   f"open({str(ready)!r}, 'w').write({report})\ntime.sleep(600)\n"])
    # A guard against a hang, not a measurement.
    for _ in range(6000):
        if ready.exists():
            return child, ready
        time.sleep(0.01)
    child.stop(grace=0)
    raise AssertionError("the child never got ready")


def test_spawn_keeps_the_environment_and_stop_ends_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CSI_PY_SPAWN_TEST", "kept")
    child, ready = _spawn_ready(tmp_path, "", "os.environ['CSI_PY_SPAWN_TEST']")
    assert ready.read_text() == "kept"
    assert child.stop() == -signal.SIGTERM
    assert child.stop() == -signal.SIGTERM  # idempotent: only reaped again


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    child, _ = _spawn_ready(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    assert child.stop(grace=0) == -signal.SIGKILL


def test_stop_gives_the_status_the_child_exits_with(tmp_path):
    child, _ = _spawn_ready(tmp_path, "signal.signal(signal.SIGTERM, lambda *_: sys.exit(4))")
    assert child.stop() == 4


def test_spawn_empty_argv():
    with pytest.raises(ValueError):
        spawn([])

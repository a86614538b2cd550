"""The driver's own hardening: an owner-only socket, a refused unsafe pool, no shell
anywhere in the source, and secrets that never reach a log or an error message."""

from __future__ import annotations

import ast
import logging
import os
import pathlib
import stat
import subprocess
import sys

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import mount_capability
from tests.conftest import NODE_ID, needs_root
from tests.reliability.harness import REPO

PACKAGE = pathlib.Path(REPO) / "csi_py"


@needs_root()
def test_the_socket_is_owner_only(driver):
    st = os.lstat(driver.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def serve(workdir: str, pool: str) -> subprocess.CompletedProcess[str]:
    """Start `csi-py serve` on `pool`; it must refuse and exit, not serve."""
    return subprocess.run(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint",
         f"unix://{workdir}/refused.sock", "--node-id", NODE_ID, "--pool", pool],
        capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(("setup", "words"), [
    ("symlink", "symlink"),
    ("group-writable", "writable by group or others"),
    ("world-writable", "writable by group or others"),
    ("symlinked-parent", "resolves to"),
    ("a-file", "xists"),
])
def test_the_driver_refuses_an_unsafe_pool(workdir, setup, words):
    real = os.path.join(workdir, "real-pool")
    os.mkdir(real, 0o700)
    pool = os.path.join(workdir, "pool")
    if setup == "symlink":
        os.symlink(real, pool)
    elif setup == "group-writable":
        os.mkdir(pool)
        os.chmod(pool, 0o770)
    elif setup == "world-writable":
        os.mkdir(pool)
        os.chmod(pool, 0o1777)
    elif setup == "symlinked-parent":
        os.symlink(workdir, os.path.join(workdir, "alias"))
        pool = os.path.join(workdir, "alias", "real-pool")
    else:
        with open(pool, "w") as fh:
            fh.write("not a pool\n")
    result = serve(workdir, pool)
    assert result.returncode == 1, result
    assert words in result.stderr, result.stderr
    assert not os.path.exists(os.path.join(workdir, "refused.sock"))
    assert os.listdir(real) == [], "nothing may be created in a refused pool"


def _python_files() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)


# Modules allowed to start programs, and why: linux/exec.py is the one runner for
# tools (mkfs, blkid, resize2fs ...); demo.py starts the driver itself for `csi-py demo`.
MAY_START_PROGRAMS = {"linux/exec.py", "demo.py"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("os", "execl"), ("os", "execlp"),
               ("os", "spawnl"), ("os", "spawnlp"), ("pty", "spawn")}


def shell_problems(source: str, rel: str) -> list[str]:
    """Every use of a shell (or of a program started without an argument list) in one
    module's source."""
    problems = []
    for word in ("shell=True", "os.system", "os.popen", "popen(", "/bin/sh", "sh -c",
                 "bash -c"):
        if word in source:
            problems.append(f"{rel}: contains {word!r}")
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
            if "subprocess" in names and rel not in MAY_START_PROGRAMS:
                problems.append(f"{rel}:{node.lineno}: imports subprocess")
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                problems.append(f"{rel}:{node.lineno}: shell= argument")
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if (func.value.id, func.attr) in SHELL_CALLS:
                problems.append(f"{rel}:{node.lineno}: {func.value.id}.{func.attr}()")
            if func.value.id == "subprocess" and func.attr in (
                    "run", "Popen", "call", "check_call", "check_output"):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp):
                    problems.append(f"{rel}:{node.lineno}: subprocess.{func.attr} with a"
                                    " string command")
    return problems


def test_no_shell_is_ever_used():
    """No shell=True, os.system, os.popen or getoutput anywhere in the driver; programs
    are started only by the allowed modules, always with an argument list."""
    files = _python_files()
    assert len(files) > 20 and any(f.name == "exec.py" for f in files)
    problems = [p for f in files
                for p in shell_problems(f.read_text(), f.relative_to(PACKAGE).as_posix())]
    assert problems == []


def test_the_no_shell_check_would_notice():
    sample = ("import subprocess, os\nsubprocess.run('ls -l', shell=True)\n"
              "os.system('id')\nsubprocess.Popen(f'mkfs {dev}')\n")
    found = "\n".join(shell_problems(sample, "core/x.py"))
    for what in ("shell= argument", "os.system()", "imports subprocess",
                 "subprocess.run with a string", "subprocess.Popen with a string"):
        assert what in found, found


MARKER = "s3cr3t-marker-9f1c"


@needs_root()
def test_secrets_never_reach_a_log_or_an_error_message(driver, caplog):
    caplog.set_level(logging.DEBUG)
    c, n = driver.client.controller, driver.client.node
    secrets = {"password": MARKER, MARKER: "key"}
    calls = [
        (c.CreateVolume, pb.CreateVolumeRequest(name="bad name \x01", secrets=secrets)),
        (c.CreateVolume, pb.CreateVolumeRequest(
            name="x", secrets=secrets, volume_capabilities=[mount_capability("vfat")])),
        (c.DeleteVolume, pb.DeleteVolumeRequest(volume_id="", secrets=secrets)),
        (c.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
            volume_id="vol-" + "0" * 32, node_id=NODE_ID, secrets=secrets,
            volume_capability=mount_capability("ext4"))),
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id="vol-" + "0" * 32, staging_target_path="relative", secrets=secrets,
            volume_capability=mount_capability("ext4"))),
        (c.CreateSnapshot, pb.CreateSnapshotRequest(name="s", secrets=secrets)),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=60)
        assert MARKER not in (err.value.details() or "")
    assert MARKER not in caplog.text

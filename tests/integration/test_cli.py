"""The human interface: `csi-py demo` end to end, and the client commands against a
running driver (as a user pre-creating a volume for a static PV would use them)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from csi_py.cli import main


@pytest.mark.integration
@pytest.mark.parametrize("args", [[], ["--fs-type", "xfs"], ["--block"]])
def test_demo_runs_to_the_end_and_leaves_nothing(args):
    if sys.platform != "linux":
        pytest.skip("linux only")
    result = subprocess.run(
        [sys.executable, "-m", "csi_py", "demo", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in (
        "CreateVolume",
        "NodeStageVolume",
        "NodePublishVolume",
        "matches",
        "NodeGetVolumeStats",
        "NodeUnstageVolume",
        "DeleteVolume",
    ):
        assert step in out, f"demo output lacks {step}:\n{out}"
    assert "no loop device, mount or file is left" in out
    workdir = re.search(r"pool in (\S+)/pool", out).group(1)
    from tests.kernel_leaks import leaks_under

    assert leaks_under(workdir) == []


@pytest.mark.integration
def test_volume_commands_create_list_delete(driver, capsys):
    endpoint = "unix://" + driver.socket
    assert (
        main(
            [
                "volume",
                "--endpoint",
                endpoint,
                "create",
                "static-pv",
                "--size",
                "64Mi",
                "--fs-type",
                "ext4",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    vid, size, _ = out.out.strip().split("\t", 2)
    assert vid.startswith("vol-") and size == str(64 << 20)
    assert "volumeHandle=" + vid in out.err

    assert main(["volume", "--endpoint", endpoint, "list"]) == 0
    listing = capsys.readouterr().out
    assert vid in listing and "ext4" in listing

    assert main(["info", "--endpoint", endpoint]) == 0
    info = capsys.readouterr().out
    assert "loop.csi-py.io" in info and "ready:    True" in info

    # Same name, different size: the driver refuses and the CLI reports the code.
    assert main(["volume", "--endpoint", endpoint, "create", "static-pv", "--size", "128Mi"]) == 1
    assert "ALREADY_EXISTS" in capsys.readouterr().err

    assert main(["volume", "--endpoint", endpoint, "delete", vid]) == 0
    assert f"deleted {vid}" in capsys.readouterr().out
    assert main(["volume", "--endpoint", endpoint, "list"]) == 0
    assert vid not in capsys.readouterr().out


def test_serve_refuses_bad_flags(capsys):
    assert main(["serve", "--endpoint", "tcp://x", "--pool", "/tmp/x", "--node-id", "n"]) == 2
    assert "--endpoint" in capsys.readouterr().err

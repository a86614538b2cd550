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


@pytest.mark.integration
def test_snapshot_restore_and_clone_commands(driver, capsys):
    endpoint = "unix://" + driver.socket
    assert main(["volume", "--endpoint", endpoint, "create", "src", "--size", "64Mi"]) == 0
    vid = capsys.readouterr().out.split("\t")[0]
    image = f"{driver.pool}/volumes/{vid}.img"
    with open(image, "r+b") as fh:  # some data, so a copy has something to move
        fh.seek(8 << 20)
        fh.write(b"csi-py" * 100000)

    assert main(["snapshot", "--endpoint", endpoint, "create", vid, "snap-1"]) == 0
    sid, size, ready = capsys.readouterr().out.strip().split("\t")
    assert sid.startswith("snap-") and size == str(64 << 20) and ready == "ready=True"

    assert main(["snapshot", "--endpoint", endpoint, "list", "--volume", vid]) == 0
    assert sid in capsys.readouterr().out

    assert main(["volume", "--endpoint", endpoint, "restore", sid, "restored",
                 "--size", "128Mi"]) == 0
    restored = capsys.readouterr().out.split("\t")
    assert restored[1] == str(128 << 20)
    assert main(["volume", "--endpoint", endpoint, "clone", vid, "cloned"]) == 0
    cloned = capsys.readouterr().out.split("\t")
    for other in (restored[0], cloned[0]):
        with open(f"{driver.pool}/volumes/{other}.img", "rb") as fh:
            fh.seek(8 << 20)
            assert fh.read(600000) == b"csi-py" * 100000

    assert main(["snapshot", "--endpoint", endpoint, "delete", sid]) == 0
    assert f"deleted {sid}" in capsys.readouterr().out
    for volume_id in (vid, restored[0], cloned[0]):
        assert main(["volume", "--endpoint", endpoint, "delete", volume_id]) == 0

"""The human interface: `csi-py demo` end to end, and the client commands against a
running driver (as a user pre-creating a volume for a static PV would use them)."""

from __future__ import annotations

import argparse
import json
import os
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


def _cli(capsys, *argv):
    """Run `csi-py ARGV` in-process as a person would type it: (status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse refusing a flag
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def _rows(table_text):
    """A kubectl-style table as (header cells, rows of cells); columns are split on runs
    of two or more spaces, which no cell contains."""
    lines = table_text.strip().splitlines()
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[1:]


@pytest.mark.integration
def test_volume_commands_as_a_person_uses_them(driver, capsys):
    endpoint = "unix://" + driver.socket
    # --endpoint after the subcommand, a decimal quantity, a size under ext4's minimum.
    status, out, err = _cli(capsys, "volume", "create", "static-pv", "--size", "10Mi",
                            "--fs-type", "ext4", "--endpoint", endpoint)
    assert status == 0, err
    header, rows = _rows(out)
    assert header == ["NAME", "ID", "SIZE", "TYPE", "PROVISIONING", "STATE"]
    name, vid, size, kind, provisioning, state = rows[0]
    assert (name, size, kind, provisioning, state) == ("static-pv", "16Mi", "ext4", "thin",
                                                       "Available")
    assert vid.startswith("vol-")
    assert "note: asked for 10Mi; created 16Mi (the smallest ext4 volume is 16Mi)" in err
    assert "volumeHandle=" + vid in err

    # --endpoint before the subcommand; a block volume shows as block, not as ext4.
    status, out, err = _cli(capsys, "--endpoint", endpoint, "volume", "create", "raw",
                            "--block", "--size", "1.5Gi")
    assert status == 0, err
    assert "fsType" not in out and "{" not in out
    _, rows = _rows(out)
    assert rows[0][0] == "raw" and rows[0][2:4] == ["1.5Gi", "block"]
    assert "note:" not in err

    # $CSI_ENDPOINT instead of the flag; the table is aligned (every row the same width
    # up to its last column) and sizes are human.
    os.environ["CSI_ENDPOINT"] = endpoint
    try:
        status, out, err = _cli(capsys, "volume", "list")
    finally:
        del os.environ["CSI_ENDPOINT"]
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    state_col = lines[0].index("STATE")
    assert all(line[state_col - 3:state_col] == "   " for line in lines)
    assert all(line[state_col:].split()[0] in ("STATE", "Available") for line in lines)
    assert "bytes" not in out and str(16 << 20) not in out

    status, out, _ = _cli(capsys, "volume", "list", "-o", "wide", "--endpoint", endpoint)
    header, rows = _rows(out)
    assert header[-3:] == ["NODES", "BYTES", "CONDITION"]
    assert {r[0]: r[-2] for r in rows} == {"static-pv": str(16 << 20), "raw": str(3 << 29)}

    status, out, _ = _cli(capsys, "volume", "list", "-o", "json", "--endpoint", endpoint)
    listing = json.loads(out)
    assert listing["kind"] == "VolumeList"
    by_name = {item["name"]: item for item in listing["items"]}
    assert by_name["static-pv"]["capacityBytes"] == 16 << 20
    assert by_name["static-pv"]["id"] == vid and by_name["raw"]["type"] == "block"

    status, out, _ = _cli(capsys, "volume", "list", "-o", "yaml", "--endpoint", endpoint)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(out) == listing

    # A damaged image shows in STATE and CONDITION (the driver's health RPCs).
    raw_id = by_name["raw"]["id"]
    image = os.path.join(driver.pool, "volumes", raw_id + ".img")
    os.truncate(image, 1 << 20)
    try:
        status, out, _ = _cli(capsys, "volume", "get", "raw", "-o", "json",
                              "--endpoint", endpoint)
        got = json.loads(out)
        assert (status, got["state"]) == (0, "Abnormal")
        assert got["condition"].startswith("ImageTruncated: ")
        status, out, _ = _cli(capsys, "volume", "list", "--endpoint", endpoint)
        assert {r[0]: r[-1] for r in _rows(out)[1]} == {"static-pv": "Available",
                                                        "raw": "Abnormal"}
    finally:
        os.truncate(image, 3 << 29)

    status, out, err = _cli(capsys, "info", "--endpoint", endpoint)
    assert status == 0 and "loop.csi-py.io" in out and "ready:     yes" in out

    # Same name, different size: the driver refuses and the CLI says why, in words.
    status, out, err = _cli(capsys, "volume", "create", "static-pv", "--size", "128Mi",
                            "--endpoint", endpoint)
    assert status == 1 and out == ""
    assert "ALREADY_EXISTS" in err and "static-pv" in err

    # Deleting what is not there says so and fails, unless the script says it is fine.
    status, out, err = _cli(capsys, "volume", "delete", "nonsense", "--endpoint", endpoint)
    assert status == 1 and out == ""
    assert 'volume "nonsense" not found; nothing deleted' in err
    status, out, err = _cli(capsys, "volume", "delete", "nonsense", "--ignore-not-found",
                            "--endpoint", endpoint)
    assert (status, out, err) == (0, "", "")
    status, out, err = _cli(capsys, "snapshot", "delete", "snap-nonsense",
                            "--endpoint", endpoint)
    assert status == 1 and 'snapshot "snap-nonsense" not found' in err

    # Delete by name and by id.
    status, out, _ = _cli(capsys, "volume", "delete", "static-pv", "--endpoint", endpoint)
    assert status == 0 and out.strip() == f'volume "static-pv" ({vid}) deleted'
    raw_id = by_name["raw"]["id"]
    status, out, _ = _cli(capsys, "volume", "delete", raw_id, "--endpoint", endpoint)
    assert status == 0 and raw_id in out
    status, out, err = _cli(capsys, "volume", "list", "--endpoint", endpoint)
    assert (status, out) == (0, "") and "No volumes found." in err


@pytest.mark.parametrize("size,says", [
    ("10m", "milli"), ("1gb", "case-sensitive"), ("-1Gi", "negative"), ("0", "above 0"),
    ("lots", "not a size"),
])
def test_bad_sizes_are_refused_with_the_reason(capsys, size, says):
    status, out, err = _cli(capsys, "volume", "create", "v", f"--size={size}")
    assert status == 2 and out == ""
    assert says in err and "argument --size" in err


def test_names_with_control_characters_are_refused(capsys):
    for name in ("line\nbreak", "bell\x07", "tab\tbed"):
        status, _, err = _cli(capsys, "volume", "create", name)
        assert status == 2 and "control character" in err


def test_no_driver_is_reported_in_plain_words_without_a_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (("volume", "list"), ("snapshot", "list"), ("info",),
                 ("volume", "delete", "x")):
        # A relative unix:// path is taken from the current directory, with no gRPC noise.
        status, out, err = _cli(capsys, *argv, "--endpoint", "unix://nothing.sock")
        assert status == 1 and out == "", argv
        path = tmp_path / "nothing.sock"
        assert err.strip() == (
            f"csi-py: no csi-py driver is listening on unix://{path} (the socket does not"
            f" exist); start one with `csi-py serve --endpoint unix://{path} --pool"
            " /var/lib/csi-py`, or point --endpoint (or $CSI_ENDPOINT) at a running one")
    # A socket file nobody answers on (a driver that died).
    import socket as socketlib

    dead = socketlib.socket(socketlib.AF_UNIX)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    status, out, err = _cli(capsys, "volume", "list", "--endpoint", str(tmp_path / "dead.sock"))
    assert status == 1 and out == "" and "nothing answers on the socket" in err


def test_the_endpoint_is_validated(capsys):
    status, out, err = _cli(capsys, "volume", "list", "--endpoint", "tcp://127.0.0.1:10000")
    assert status == 1 and out == ""
    assert "csi-py serves CSI only on a unix socket; tcp:// is not supported" in err
    status, _, err = _cli(capsys, "volume", "list", "--endpoint", "unix://")
    assert status == 1 and "names no socket path" in err
    status, _, err = _cli(capsys, "info", "--endpoint", "/" + "x" * 200)
    assert status == 1 and "longer than the 107 bytes" in err


def test_serve_refuses_bad_flags(capsys):
    status, _, err = _cli(capsys, "serve", "--endpoint", "tcp://x", "--pool", "/tmp/x",
                          "--node-id", "n")
    assert status == 2 and "tcp:// is not supported" in err


def test_every_flag_and_argument_has_help():
    from csi_py.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "csi-py")
    assert missing == []


@pytest.mark.integration
def test_a_refused_serve_touches_nothing(driver, tmp_path):
    """A second driver on a socket in use stops before it creates or opens any pool."""
    other_pool = tmp_path / "other-pool"
    result = subprocess.run(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{driver.socket}",
         "--pool", str(other_pool), "--node-id", "n2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "another process is serving on" in result.stderr
    assert not other_pool.exists()


@pytest.mark.integration
def test_snapshot_restore_and_clone_commands(driver, capsys):
    endpoint = "unix://" + driver.socket

    def cli_json(*argv):
        status, out, err = _cli(capsys, *argv, "-o", "json", "--endpoint", endpoint)
        assert status == 0, err
        return json.loads(out)

    vid = cli_json("volume", "create", "src", "--size", "64Mi")["id"]
    image = f"{driver.pool}/volumes/{vid}.img"
    with open(image, "r+b") as fh:  # some data, so a copy has something to move
        fh.seek(8 << 20)
        fh.write(b"csi-py" * 100000)

    snap = cli_json("snapshot", "create", "src", "snap-1")  # the volume by name
    sid = snap["id"]
    assert sid.startswith("snap-") and snap["sizeBytes"] == 64 << 20 and snap["readyToUse"]
    assert [s["id"] for s in cli_json("snapshot", "list", "--volume", vid)["items"]] == [sid]
    status, out, _ = _cli(capsys, "snapshot", "list", "--endpoint", endpoint)
    header, rows = _rows(out)
    assert header == ["ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"]
    assert rows[0][:4] == [sid, vid, "64Mi", "true"]

    restored = cli_json("volume", "restore", sid, "restored", "--size", "128Mi")
    assert restored["capacityBytes"] == 128 << 20
    cloned = cli_json("volume", "clone", "src", "cloned")
    assert cloned["capacityBytes"] == 64 << 20
    for other in (restored["id"], cloned["id"]):
        with open(f"{driver.pool}/volumes/{other}.img", "rb") as fh:
            fh.seek(8 << 20)
            assert fh.read(600000) == b"csi-py" * 100000

    status, out, _ = _cli(capsys, "snapshot", "delete", sid, "--endpoint", endpoint)
    assert status == 0 and out.strip() == f"snapshot {sid} deleted"
    for volume_id in (vid, restored["id"], cloned["id"]):
        assert main(["volume", "--endpoint", endpoint, "delete", volume_id]) == 0



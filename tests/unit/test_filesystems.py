"""The filesystem table (csi_py.linux.filesystems): one class per filesystem, the only
place its facts live, and every tool csi_py runs is one Probe checks."""

from __future__ import annotations

import ast
import pathlib

import pytest

import csi_py
from csi_py import config
from csi_py.core import driver as core_driver
from csi_py.linux import filesystems, fs
from csi_py.linux.filesystems import FILESYSTEMS, for_type
from tests.lifecycle import MiB

SOURCE = pathlib.Path(csi_py.__file__).parent


def test_the_table_holds_the_three_filesystems_with_their_facts():
    assert filesystems.SUPPORTED == ("ext4", "xfs", "btrfs")
    # ext4's floor is ours (mkfs.ext4 takes 1 MiB but writes no journal under 2 MiB);
    # xfs and btrfs are what their mkfs here refuses to go under (tested for real in
    # tests/integration/test_linux_fs.py).
    assert filesystems.MIN_FS_BYTES == {"ext4": 16 * MiB, "xfs": 300 * MiB, "btrfs": 109 * MiB}
    assert {name: fs.label_max for name, fs in FILESYSTEMS.items()} == {
        "ext4": 16, "xfs": 12, "btrfs": 255}
    assert FILESYSTEMS["xfs"].mount_options == ("nouuid",)
    assert FILESYSTEMS["btrfs"].min_grow_bytes == 256 * MiB
    assert [n for n, f in FILESYSTEMS.items() if f.grows_unmounted] == ["ext4"]
    for name, kind in FILESYSTEMS.items():
        assert kind.name == name and name in kind.handles
        assert kind.mkfs[0] == f"mkfs.{name}" and kind.mkfs[0] in kind.tools


def test_ext2_and_ext3_are_grown_and_checked_by_the_ext4_class():
    assert for_type("ext2") is for_type("ext3") is FILESYSTEMS["ext4"]
    assert for_type("vfat") is None


def test_config_and_the_linux_service_read_the_same_table():
    assert config.SUPPORTED_FILESYSTEMS is filesystems.SUPPORTED
    assert config.MIN_FS_BYTES is filesystems.MIN_FS_BYTES
    assert fs.SUPPORTED_FS is filesystems.SUPPORTED
    assert fs.TOOLS == tuple(filesystems.tools())
    assert not hasattr(core_driver, "TOOLS_BY_FS")


def test_tools_per_filesystem_include_every_one_it_may_run():
    assert filesystems.tools(["ext4"]) == ["blkid", "mkfs.ext4", "resize2fs", "e2fsck"]
    assert filesystems.tools(["xfs"]) == ["blkid", "mkfs.xfs", "xfs_growfs"]
    assert filesystems.tools(["btrfs"]) == ["blkid", "mkfs.btrfs", "btrfs"]
    assert filesystems.tools(["btrfs", "xfs", "btrfs"]).count("btrfs") == 1


def test_missing_tools_looks_each_up_now(monkeypatch):
    monkeypatch.setattr("csi_py.linux.exec.find_tool",
                        lambda name: None if name in ("e2fsck", "xfs_growfs") else "/bin/" + name)
    assert filesystems.missing_tools() == ["e2fsck", "xfs_growfs"]
    assert filesystems.missing_tools(["ext4"]) == ["e2fsck"]
    assert filesystems.missing_tools(["btrfs"]) == []


def _tools_run_in(path: pathlib.Path) -> set[str]:
    """The first word of every run([...]) argv literal in one module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run"
                and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts
                and isinstance(node.args[0].elts[0], ast.Constant)):
            found.add(node.args[0].elts[0].value)
    return found


def test_every_tool_csi_py_runs_is_in_the_table():
    """Probe checks the table's tools: a tool run anywhere in csi_py/ but missing from
    the table would let Probe say ready without it (as e2fsck once did)."""
    run = set()
    for path in SOURCE.rglob("*.py"):
        if "_proto" not in path.parts:
            run |= _tools_run_in(path)
    run |= {kind.mkfs[0] for kind in FILESYSTEMS.values()}
    assert {"blkid", "resize2fs", "e2fsck", "xfs_growfs", "btrfs"} <= run  # the scan works
    # Equal, not only contained: the table names no tool that nothing runs.
    assert run == set(filesystems.tools())


@pytest.mark.parametrize("gone", sorted(set(filesystems.tools())))
def test_probe_fails_for_each_tool_the_driver_can_run(tmp_path, monkeypatch, gone):
    """Probe (the real servicer over a driver on the fakes) names every missing tool of
    the table, e2fsck and resize2fs as much as mkfs."""
    import grpc

    from csi_py._proto import csi_pb2 as pb
    from csi_py.config import Config
    from csi_py.core.driver import Driver
    from csi_py.linux import exec as linux_exec
    from csi_py.rpc.identity import IdentityService
    from tests.fakes import fake_host

    class Context:
        def abort(self, code, details):
            self.code, self.details = code, details
            raise RuntimeError(details)

    monkeypatch.setattr(linux_exec, "find_tool", lambda n: None if n == gone else "/bin/" + n)
    config = Config(endpoint="unix:///u.sock", node_id="n1",
                    pool=str(tmp_path / "pool")).validated()
    driver = Driver(config, fake_host())
    try:
        context = Context()
        with pytest.raises(RuntimeError):
            IdentityService(driver).Probe(pb.ProbeRequest(), context)
        assert context.code is grpc.StatusCode.FAILED_PRECONDITION
        assert f"required tools are missing: {gone};" in context.details
    finally:
        driver.close()


@pytest.mark.parametrize("head, found", [
    (bytes(70000), None),
    (b"XFSB" + bytes(70000), "xfs"),
])
def test_each_class_probes_its_own_signature(head, found):
    assert [k.probe(head) for k in FILESYSTEMS.values() if k.probe(head)] == (
        [found] if found else [])

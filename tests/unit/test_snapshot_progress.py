"""The progress a copy-based snapshot reports, for `csi-py snapshot create` to show."""

import json
import os

from csi_py.config import Config
from csi_py.core.driver import Driver
from csi_py.domain.model import AccessMode, AccessType, Capability, CapacityRange
from csi_py.linux.progress import ProgressFile, progress_file_name
from tests.fakes import fake_host


def test_progress_file_is_json_and_removable(tmp_path):
    path = str(tmp_path / progress_file_name("my snap"))
    report = ProgressFile(path)
    report(64 << 20, 256 << 20)
    assert json.load(open(path))["done"] == 64 << 20
    report.remove()
    report.remove()
    assert not os.path.exists(path)


def test_snapshot_copy_reports_progress_and_cleans_up(tmp_path):
    config = Config(endpoint="unix:///u.sock", node_id="n", pool=str(tmp_path / "pool"),
                    reserve_bytes=0).validated()
    driver = Driver(config, fake_host())
    driver.start()
    cap = Capability(AccessType.BLOCK, AccessMode.SINGLE_NODE_WRITER)
    vol = driver.controller.volumes.create_volume(
        "v", CapacityRange(256 << 20, 0), [cap], {}, {}, [])
    with open(driver.pool.image_path(vol.id), "r+b") as fh:
        for offset in range(0, 200 << 20, 16 << 20):
            fh.seek(offset)
            fh.write(b"x" * (1 << 20))
    calls = []
    snap = driver.snapshots.create(vol.id, "s", {}, progress=lambda d, t: calls.append((d, t)))
    if snap.method == "copy":
        assert calls and calls[-1][0] == calls[-1][1] >= 13 << 20
    assert not [n for n in os.listdir(driver.pool.snapshots_dir) if n.startswith(".")]
    driver.close()

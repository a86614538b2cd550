"""A lost catalog is rebuilt from the pool and the kernel, and no pod notices.

The driver runs ext4, xfs and raw block volumes, each staged, published and holding
data, plus a snapshot and a group snapshot. Its catalog is then deleted, emptied,
truncated or garbled while it is stopped, and it starts again:

- every mount and loop device is kept (nothing is unmounted or detached) and every
  target still shows its volume's data and takes new writes;
- the rebuilt catalog lists every volume and snapshot with its name, size and
  filesystem, and the report says what was adopted (and where a damaged catalog went);
- every later call works: a second publish, unpublish, unstage, delete, and a restore
  from the adopted snapshot.

Also: the WAL lost with a killed driver, `csi-py pool check|rebuild`, and a catalog
from a newer csi-py (a one-line error, never a rebuild).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conftest import _start, needs_root
from tests.kernel_leaks import loops_under, mounts_under
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import (
    KILLED,
    REPO,
    DriverProcess,
    disagreements,
    payload,
    read_digest,
    write_data,
)

pytestmark = [pytest.mark.integration, needs_root()]

KINDS = {"ext4": 32 * MiB, "xfs": 300 * MiB, "block": 32 * MiB}


def damage(pool: str, how: str) -> None:
    path = os.path.join(pool, "catalog.db")
    for suffix in ("-wal", "-shm"):
        assert not os.path.exists(path + suffix), "the stopped driver left its WAL"
    if how == "deleted":
        os.unlink(path)
    elif how == "emptied":
        os.truncate(path, 0)
    elif how == "truncated":
        size = os.path.getsize(path)
        assert size >= 3 * 4096, size
        os.truncate(path, size // 2)
    elif how == "garbled":
        with open(path, "r+b") as fh:
            fh.write(b"\xde\xad\xbe\xef" * 1024)
    else:
        raise AssertionError(how)


def restart_with(driver, how: str) -> None:
    driver.stop()
    damage(driver.pool, how)
    driver.server, driver.client = _start(driver.workdir, driver.options)


@pytest.mark.parametrize("how", ["deleted", "emptied", "truncated", "garbled"])
def test_lost_catalog_is_rebuilt_and_pods_keep_their_mounts_and_data(driver, how):
    v = Volumes(driver.client)
    made: dict[str, tuple[str, str, str]] = {}  # kind -> (id, staging, target)
    digests: dict[str, str] = {}
    for kind, size in KINDS.items():
        vid = v.create(f"rebuild-{kind}", kind, size).volume_id
        staging, target = driver.path(f"stage-{kind}"), driver.path(f"t-{kind}")
        os.mkdir(staging)
        v.bring_up(vid, kind, staging, target)
        digests[kind] = write_data(target, kind, payload(f"before-{kind}"))
        made[kind] = (vid, staging, target)
    snap = v.snapshot(made["ext4"][0], "rebuild-snap")
    group = v.group_snapshot("rebuild-group", [made["ext4"][0], made["block"][0]])
    mounts_before = mounts_under(driver.workdir)
    loops_before = loops_under(driver.workdir)

    restart_with(driver, how)

    v = Volumes(driver.client)
    core = driver.server.driver
    report = core.last_reconcile
    # Nothing was taken down, and every pod still sees its data.
    assert mounts_under(driver.workdir) == mounts_before
    assert loops_under(driver.workdir) == loops_before
    assert report["left_alone"] == [] and report["errors"] == [], report
    for kind, (_, _, target) in made.items():
        assert read_digest(target, kind, MiB) == digests[kind], kind
    # The rebuilt catalog knows every volume and snapshot by name, size and filesystem.
    if how in ("truncated", "garbled"):
        assert len(report.rebuild["catalog_moved_to"]) == 1, report
        assert os.path.exists(report.rebuild["catalog_moved_to"][0])
    assert len(report.rebuild["adopted_volumes"]) == 3, report
    assert len(report.rebuild["adopted_snapshots"]) == 1 + len(group.snapshots), report
    assert len(report.rebuild["adopted_groups"]) == 1, report
    assert len(report.rebuild["adopted_stagings"]) == 3, report
    listed = {e.volume.volume_id: e.volume for e in driver.client.controller.ListVolumes(
        pb.ListVolumesRequest(), timeout=60).entries}
    assert set(listed) == {vid for vid, _, _ in made.values()}
    for kind, (vid, _, _) in made.items():
        vol = core.catalog.get_volume(vid)
        assert vol is not None and vol.name == f"rebuild-{kind}"
        assert vol.capacity_bytes == listed[vid].capacity_bytes == KINDS[kind]
        assert vol.fs_type == ("" if kind == "block" else kind)
    snaps = {s.snapshot.snapshot_id: s.snapshot for s in driver.client.controller.ListSnapshots(
        pb.ListSnapshotsRequest(), timeout=60).entries}
    assert set(snaps) == {snap.snapshot_id} | {s.snapshot_id for s in group.snapshots}
    got = core.catalog.get_snapshot(snap.snapshot_id)
    assert got is not None and got.name == "rebuild-snap" and got.fs_type == "ext4"
    assert snaps[snap.snapshot_id].size_bytes == KINDS["ext4"]
    assert core.catalog.get_group(group.group_snapshot_id).name == "rebuild-group"

    # The pods' volumes keep working, and so does every later call.
    for kind, (vid, staging, target) in made.items():
        digests[kind] = write_data(target, kind, payload(f"after-{kind}"))
        assert read_digest(target, kind, MiB) == digests[kind]
        second = target + "-2"
        v.publish(vid, kind, staging, second)
        assert read_digest(second, kind, MiB) == digests[kind]
        v.unpublish(vid, second)
    # kubelet's periodic NodeStageVolume with its own flags is taken as it comes.
    v.stage(made["ext4"][0], "ext4", made["ext4"][1])
    restored = v.create("restored", "ext4", KINDS["ext4"], snapshot_id=snap.snapshot_id)
    v.delete(restored.volume_id)
    assert disagreements(driver.workdir, driver.pool) == []
    for vid, staging, target in made.values():
        v.take_down(vid, staging, target)
    v.delete_group(group.group_snapshot_id, [s.snapshot_id for s in group.snapshots])
    v.delete_snapshot(snap.snapshot_id)
    for vid, _, _ in made.values():
        v.delete(vid)
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []


def test_pool_check_and_rebuild_commands(driver):
    v = Volumes(driver.client)
    vid = v.create("cli-vol", "ext4", 32 * MiB).volume_id
    sid = v.snapshot(vid, "cli-snap").snapshot_id

    def pool(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "csi_py", "pool", action, "--pool",
                               driver.pool], capture_output=True, text=True, cwd=REPO,
                              timeout=120)

    checked = pool("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "adopted_volumes=0" in checked.stdout
    driver.stop()
    damage(driver.pool, "garbled")
    checked = pool("check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"adopted_volumes: {vid} name='cli-vol' size={32 * MiB} fs=ext4" in checked.stdout
    assert f"adopted_snapshots: {sid} name='cli-snap'" in checked.stdout
    assert "would be moved aside" in checked.stdout
    rebuilt = pool("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "adopted_volumes=1" in rebuilt.stdout and "catalog_moved_to=1" in rebuilt.stdout
    assert pool("check").returncode == 0
    driver.server, driver.client = _start(driver.workdir, driver.options)
    v = Volumes(driver.client)
    assert driver.server.driver.last_reconcile.rebuild["adopted_volumes"] == []
    v.delete_snapshot(sid)
    v.delete(vid)
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []


def test_newer_catalog_is_a_clear_error_not_a_traceback(workdir):
    import sqlite3

    pool = os.path.join(workdir, "pool")
    os.mkdir(pool, 0o700)
    db = sqlite3.connect(os.path.join(pool, "catalog.db"))
    db.execute("PRAGMA user_version=99")
    db.close()
    result = subprocess.run(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{workdir}/c.sock",
         "--pool", pool], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "schema version 99" in result.stderr and "catalog.db" in result.stderr


def test_wal_lost_after_a_kill_is_rebuilt(workdir):
    """The driver is killed (SIGKILL, no checkpoint) and its WAL is lost with it: the
    catalog file alone knows nothing of the recent volumes. The next start adopts them
    from the pool and the kernel; the pods keep their mounts and data."""
    d = DriverProcess(workdir)
    try:
        d.start()
        v = Volumes(d.client)
        made = []
        for kind in ("ext4", "block"):
            vid = v.create(f"wal-{kind}", kind, 32 * MiB).volume_id
            staging, target = os.path.join(workdir, f"s-{kind}"), os.path.join(workdir,
                                                                                 f"t-{kind}")
            os.mkdir(staging)
            v.bring_up(vid, kind, staging, target)
            made.append((vid, kind, staging, target, write_data(target, kind,
                                                                payload(kind))))
        assert d.proc is not None
        d.proc.kill()
        assert d.wait_killed() == KILLED
        wal = os.path.join(d.pool, "catalog.db-wal")
        assert os.path.getsize(wal) > 0, "nothing was in the WAL: nothing to lose"
        os.unlink(wal)
        os.unlink(os.path.join(d.pool, "catalog.db-shm"))
        mounts_before = mounts_under(workdir)
        d.stop()
        d.start()
        summary = d.reconcile_summary()
        assert summary["adopted_volumes"] == 2 and summary["adopted_stagings"] == 2, d.log()
        assert summary["left_alone"] == 0 and summary["errors"] == 0, d.log()
        assert mounts_under(workdir) == mounts_before
        v = Volumes(d.client)
        listed = d.client.controller.ListVolumes(pb.ListVolumesRequest(), timeout=60)
        assert {e.volume.volume_id for e in listed.entries} == {m[0] for m in made}
        for vid, kind, staging, target, digest in made:
            assert read_digest(target, kind, MiB) == digest
            v.take_down(vid, staging, target)
            v.delete(vid)
        assert disagreements(workdir, d.pool, expect_empty=True) == []
    finally:
        d.stop()

"""Unit tests of the self-describing records and of the catalog rebuild, over the
in-memory fakes of the Linux layer (the pool's files are real)."""

from __future__ import annotations

import json
import os

import pytest

from csi_py.config import Config
from csi_py.core.driver import Driver
from csi_py.core.rebuild import check_pool
from csi_py.domain.model import CapacityRange
from csi_py.state.records import FORMATTED, RecordError, Records, VolumeRecord, decode
from tests.fakes import fake_host
from tests.lifecycle import CORE_EXT4, MiB

MOUNT = CORE_EXT4


def start(tmp_path, host) -> Driver:
    config = Config(endpoint="unix:///unused.sock", node_id="n1", pool=str(tmp_path / "pool"),
                    reserve_bytes=0).validated()
    driver = Driver(config, host)
    driver.start()
    return driver


@pytest.fixture
def made(tmp_path):
    """A driver with two volumes, a snapshot and a group snapshot; stopped, so the
    test can damage its pool before the next start."""
    host = fake_host()
    driver = start(tmp_path, host)
    c = driver.controller.volumes
    vols = [c.create_volume(f"v{i}", CapacityRange(32 * MiB, 0), [MOUNT], {}, {}, [])
            for i in range(2)]
    snap = driver.snapshots.create(vols[0].id, "s0", {})
    group = driver.groups.create_group("g0", [v.id for v in vols], {})
    driver.close()
    return tmp_path, host, vols, snap, group


def test_a_record_round_trips_and_garbage_is_refused(tmp_path):
    from csi_py.domain.model import Provisioning, Volume, VolumeState

    records = Records(str(tmp_path))
    vol = Volume("vol-" + "1" * 32, "pvc-1", 64 * MiB, "xfs", Provisioning.THICK,
                 (("fsType", "xfs"),), VolumeState.CREATING, 12.5,
                 content_source="snapshot:snap-" + "2" * 32,
                 mutable_parameters=(("readAheadKiB", "256"),))
    records.put_volume(vol, FORMATTED)
    got = records.get_volume(vol.id)
    assert got == VolumeRecord(vol.__class__(**{**vol.__dict__, "state": VolumeState.READY}),
                               FORMATTED)
    for bad in (b"", b"{", b"[]", b'{"version": 1, "kind": "volume"}',
                json.dumps({"version": 99, "kind": "volume"}).encode(), b"\xff\xfe"):
        with pytest.raises(RecordError):
            decode(bad)


def test_a_deleted_catalog_is_rebuilt_with_names_sizes_and_groups(made):
    tmp_path, host, vols, snap, group = made
    os.unlink(tmp_path / "pool" / "catalog.db")
    driver = start(tmp_path, host)
    try:
        found = driver.last_reconcile.rebuild
        assert len(found["adopted_volumes"]) == 2 and len(found["adopted_groups"]) == 1
        assert len(found["adopted_snapshots"]) == 1 + len(group.snapshot_ids)
        for vol in vols:
            got = driver.catalog.get_volume(vol.id)
            assert (got.name, got.capacity_bytes, got.fs_type) == (vol.name, 32 * MiB, "ext4")
        # Ids keep their node part: records are named by the key, and hold the whole id.
        assert snap.id.endswith(".n1") and all(s.endswith(".n1") for s in group.snapshot_ids)
        assert os.path.exists(tmp_path / "pool" / "records" / (snap.id[:-len(".n1")] + ".json"))
        got = driver.catalog.get_snapshot(snap.id)
        assert (got.name, got.source_volume_id, got.size_bytes) == ("s0", vols[0].id, 32 * MiB)
        regrouped = driver.catalog.get_group(group.id)
        assert regrouped.name == "g0"
        assert sorted(regrouped.snapshot_ids) == sorted(group.snapshot_ids)
        # A second start finds nothing more to adopt.
        driver.close()
        driver = start(tmp_path, host)
        assert driver.last_reconcile.rebuild.lines() == []
    finally:
        driver.close()


def test_conflicts_stale_and_unreadable_records_are_reported_and_only_stale_removed(made):
    tmp_path, host, vols, _, _ = made
    pool = tmp_path / "pool"
    records = Records(str(pool / "records"))
    # A record whose image is gone describes nothing: removed.
    stale = "vol-" + "d" * 32
    records.put_volume(vols[0].__class__(**{**vols[0].__dict__, "id": stale, "name": "gone"}))
    # A record naming a volume the catalog has under another id: not adopted.
    twin = "vol-" + "e" * 32
    records.put_volume(vols[1].__class__(**{**vols[1].__dict__, "id": twin}))
    (pool / "volumes" / f"{twin}.img").write_bytes(b"")
    # A garbled record: reported, never removed.
    (pool / "records" / ("vol-" + "f" * 32 + ".json")).write_bytes(b"garbage")
    # A catalog volume whose record was lost: written again.
    os.unlink(pool / "records" / f"{vols[1].id}.json")
    driver = start(tmp_path, host)
    try:
        found = driver.last_reconcile.rebuild
        assert [x.split()[0] for x in found["stale_records"]] == [records.path(stale)]
        assert not os.path.exists(records.path(stale))
        assert len(found["conflicts"]) == 1 and twin in found["conflicts"][0]
        assert driver.catalog.get_volume(twin) is None
        assert os.path.exists(pool / "volumes" / f"{twin}.img")
        assert len(found["unreadable_records"]) == 1
        assert os.path.exists(pool / "records" / ("vol-" + "f" * 32 + ".json"))
        assert found["records_written"] == [records.path(vols[1].id)]
        assert records.get_volume(vols[1].id) is not None
    finally:
        driver.close()


def test_pool_check_writes_nothing_and_rebuild_applies(made):
    from csi_py.core.pool import Pool

    tmp_path, host, vols, _, _ = made
    pool = Pool(str(tmp_path / "pool"))
    with open(pool.catalog_path, "r+b") as fh:
        fh.write(b"not a database" * 100)
    before = sorted(os.listdir(pool.root))
    checked = check_pool(pool, host, apply=False)
    assert len(checked["adopted_volumes"]) == 2 and "would be moved aside" in \
        checked["catalog_moved_to"][0]
    assert sorted(os.listdir(pool.root)) == before
    rebuilt = check_pool(pool, host, apply=True)
    assert len(rebuilt["adopted_volumes"]) == 2 and len(rebuilt["catalog_moved_to"]) == 1
    assert os.path.exists(rebuilt["catalog_moved_to"][0])
    assert check_pool(pool, host, apply=False).lines() == []


def test_block_size_is_recorded_and_old_records_mean_512(tmp_path, made):
    """New volumes record 4096-byte logical blocks (in the catalog and their record,
    so a rebuilt catalog keeps it); a record written before the field existed
    describes a 512-byte volume; a clone keeps its source's block size."""
    tmp_path, host, vols, _, _ = made
    records = Records(str(tmp_path / "pool" / "records"))
    assert vols[0].block_size == 4096
    assert records.get_volume(vols[0].id).volume.block_size == 4096
    path = records.path(vols[1].id)
    raw = json.loads(open(path, "rb").read())
    del raw["block_size"]
    with open(path, "w") as fh:
        json.dump(raw, fh)
    assert records.get_volume(vols[1].id).volume.block_size == 512
    raw["block_size"] = 333
    with pytest.raises(RecordError):
        decode(json.dumps(raw).encode())
    # A catalog rebuilt from the records keeps each volume's block size.
    os.unlink(tmp_path / "pool" / "catalog.db")
    driver = start(tmp_path, host)
    try:
        assert driver.catalog.get_volume(vols[0].id).block_size == 4096
        assert driver.catalog.get_volume(vols[1].id).block_size == 512
        from csi_py.core.sources import ContentSource

        clone = driver.controller.volumes.create_volume(
            "clone-of-old", CapacityRange(32 * MiB, 0), [MOUNT], {}, {}, [],
            source=ContentSource("volume", vols[1].id))
        assert clone.block_size == 512
    finally:
        driver.close()

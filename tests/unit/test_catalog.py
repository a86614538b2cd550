"""Unit tests of the SQLite catalog (a real database file in a temp dir)."""

import os
import sqlite3

import pytest

from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Attachment,
    Provisioning,
    Staging,
    StagingState,
    Volume,
    VolumeState,
)
from csi_py.state.catalog import Catalog
from csi_py.state.errors import CatalogError, NameTaken
from csi_py.state.schema import SCHEMA_VERSION


def vol(i: int, state=VolumeState.READY) -> Volume:
    return Volume(id=f"vol-{i:032x}", name=f"pvc-{i}", capacity_bytes=i << 20, fs_type="ext4",
                  provisioning=Provisioning.THIN, parameters=(("fsType", "ext4"),),
                  state=state, created_at=1.0)


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(str(tmp_path / "catalog.db"))
    yield cat
    cat.close()


def test_insert_and_lookup_by_id_and_name(catalog):
    stored = catalog.insert_volume(vol(1))
    assert stored.seq == 1
    assert catalog.get_volume(stored.id) == stored
    assert catalog.get_volume_by_name("pvc-1") == stored
    assert catalog.get_volume("vol-missing") is None


def test_names_are_unique(catalog):
    catalog.insert_volume(vol(1))
    dup = Volume(**{**vol(2).__dict__, "name": "pvc-1"})
    with pytest.raises(NameTaken):
        catalog.insert_volume(dup)


def test_keyset_pages_survive_deletions(catalog):
    for i in range(1, 8):
        catalog.insert_volume(vol(i))
    first = catalog.list_volumes(0, 3)
    assert [v.name for v in first] == ["pvc-1", "pvc-2", "pvc-3"]
    catalog.delete_volume(first[-1].id)  # the page's last entry disappears
    second = catalog.list_volumes(first[-1].seq, 3)
    assert [v.name for v in second] == ["pvc-4", "pvc-5", "pvc-6"]
    assert catalog.highest_seq_issued() == 7


def test_seq_is_never_reused_after_delete(catalog):
    a = catalog.insert_volume(vol(1))
    catalog.delete_volume(a.id)
    b = catalog.insert_volume(vol(2))
    assert b.seq == 2


def test_state_and_capacity_updates_and_state_index(catalog):
    a = catalog.insert_volume(vol(1, VolumeState.CREATING))
    catalog.insert_volume(vol(2))
    assert [v.id for v in catalog.volumes_in_state(VolumeState.CREATING)] == [a.id]
    catalog.set_volume_state(a.id, VolumeState.READY)
    catalog.set_volume_capacity(a.id, 99 << 20)
    got = catalog.get_volume(a.id)
    assert got.state is VolumeState.READY and got.capacity_bytes == 99 << 20
    assert catalog.provisioned_bytes() == (99 << 20) + (2 << 20)


def test_attachments(catalog):
    a = catalog.insert_volume(vol(1))
    att = Attachment(a.id, "node-1", False, AccessMode.SINGLE_NODE_WRITER, AccessType.MOUNT)
    catalog.put_attachment(att)
    catalog.put_attachment(att)  # idempotent
    assert catalog.attachments_of(a.id) == [att]
    assert catalog.attachment_count("node-1") == 1
    assert catalog.attachments_of_many([a.id, "vol-x"]) == {a.id: [att]}
    catalog.remove_attachment(a.id, "node-1")
    catalog.remove_attachment(a.id, "node-1")
    assert catalog.attachments_of(a.id) == []


def test_a_put_replaces_the_row_with_its_key_column_by_column(catalog):
    a = catalog.insert_volume(vol(1))
    first = Staging(a.id, "/stage", AccessType.MOUNT, "xfs", ("noatime", "nodev"), False,
                    "/dev/loop3", StagingState.STAGING)
    then = Staging(a.id, "/stage2", AccessType.BLOCK, "", (), True, "/dev/loop4",
                   StagingState.UNSTAGING)
    catalog.put_staging(first)
    assert catalog.get_staging(a.id) == first
    catalog.put_staging(then)
    assert catalog.list_stagings() == [then]
    rw = Attachment(a.id, "node-1", False, AccessMode.SINGLE_NODE_WRITER, AccessType.MOUNT)
    ro = Attachment(a.id, "node-1", True, AccessMode.MULTI_NODE_READER_ONLY, AccessType.BLOCK)
    catalog.put_attachment(rw)
    catalog.put_attachment(ro)
    assert catalog.attachments_of(a.id) == [ro]


def test_stagings_and_delete_volume_cascades(catalog):
    a = catalog.insert_volume(vol(1))
    st = Staging(a.id, "/stage", AccessType.MOUNT, "ext4", ("noatime",), False, "/dev/loop3",
                 StagingState.STAGED)
    catalog.put_staging(st)
    catalog.put_attachment(Attachment(a.id, "n", False, AccessMode.SINGLE_NODE_WRITER,
                                      AccessType.MOUNT))
    assert catalog.get_staging(a.id) == st
    assert catalog.list_stagings() == [st]
    catalog.delete_volume(a.id)
    assert catalog.get_staging(a.id) is None
    assert catalog.attachments_of(a.id) == []


def test_records_survive_reopen_and_schema_version_is_set(tmp_path):
    path = str(tmp_path / "c.db")
    cat = Catalog(path)
    stored = cat.insert_volume(vol(5))
    cat.close()
    again = Catalog(path)
    assert again.get_volume(stored.id) == stored
    again.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "c.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(CatalogError, match="schema version"):
        Catalog(path)


def test_catalog_file_is_owner_only(tmp_path):
    import os
    import stat

    path = str(tmp_path / "c.db")
    Catalog(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # The WAL and shared-memory files hold the same records: owner-only too, also
    # under a permissive umask, while the catalog is open and being written.
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "new.db")  # created now, as at a driver's first start
        catalog = Catalog(path)
        catalog.put_attachment(Attachment("vol-1", "n1", False, AccessMode.SINGLE_NODE_WRITER,
                                          AccessType.MOUNT))
        for suffix in ("-wal", "-shm"):
            assert stat.S_IMODE(os.stat(path + suffix).st_mode) == 0o600, suffix
        catalog.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_catalog_is_reported_as_damaged(tmp_path, damage):
    from csi_py.state.errors import CatalogDamaged

    path = str(tmp_path / "c.db")
    catalog = Catalog(path)
    for i in range(50):
        catalog.put_attachment(Attachment(f"vol-{i}", "n1", False,
                                          AccessMode.SINGLE_NODE_WRITER, AccessType.MOUNT))
    catalog.close()
    if damage == "garbled":
        with open(path, "r+b") as fh:
            fh.write(b"garbage!" * 512)
    else:
        os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(CatalogDamaged, match="damaged"):
        Catalog(path)


def snap(i: int, source: str, group: str = "", state=None):
    from csi_py.domain.model import Snapshot, SnapshotState

    return Snapshot(id=f"snap-{i:032x}", name=f"snap-{i}", source_volume_id=source,
                    size_bytes=1 << 20, created_at=2.0, state=state or SnapshotState.READY,
                    fs_type="xfs", method="copy", group_id=group)


def test_snapshots_filters_pages_and_state(catalog):
    from csi_py.domain.model import SnapshotState

    a = catalog.insert_volume(vol(1))
    b = catalog.insert_volume(vol(2))
    s1 = catalog.insert_snapshot(snap(1, a.id, state=SnapshotState.CREATING))
    s2 = catalog.insert_snapshot(snap(2, b.id))
    s3 = catalog.insert_snapshot(snap(3, a.id))
    with pytest.raises(NameTaken):
        catalog.insert_snapshot(snap(1, a.id))
    assert catalog.get_snapshot_by_name("snap-2") == s2
    assert [s.id for s in catalog.list_snapshots(0, 10, source_volume_id=a.id)] == [s1.id, s3.id]
    assert [s.id for s in catalog.list_snapshots(0, 10, snapshot_id=s2.id)] == [s2.id]
    assert [s.id for s in catalog.list_snapshots(s1.seq, 1)] == [s2.id]
    catalog.update_snapshot(s1.id, SnapshotState.READY, method="reflink")
    got = catalog.get_snapshot(s1.id)
    assert got.ready and got.method == "reflink"
    catalog.update_snapshot(s1.id, SnapshotState.DELETING)
    assert catalog.get_snapshot(s1.id).method == "reflink"  # kept when not given
    assert [s.id for s in catalog.snapshots_in_state(SnapshotState.DELETING)] == [s1.id]
    catalog.delete_snapshot(s1.id)
    catalog.delete_snapshot(s1.id)
    assert catalog.get_snapshot(s1.id) is None
    assert catalog.highest_snapshot_seq_issued() == 3


def test_groups_hold_their_members(catalog):
    from csi_py.domain.model import GroupSnapshot, SnapshotState

    a = catalog.insert_volume(vol(1))
    group = GroupSnapshot("group-1", "g1", 3.0, SnapshotState.CREATING)
    catalog.insert_group(group)
    with pytest.raises(NameTaken):
        catalog.insert_group(GroupSnapshot("group-2", "g1", 3.0, SnapshotState.CREATING))
    s1 = catalog.insert_snapshot(snap(1, a.id, group="group-1"))
    catalog.set_group_state("group-1", SnapshotState.READY)
    got = catalog.get_group("group-1")
    assert got.snapshot_ids == (s1.id,) and got.state is SnapshotState.READY
    assert catalog.get_group_by_name("g1") == got
    catalog.delete_group("group-1")
    assert catalog.get_group("group-1") is None and catalog.get_snapshot(s1.id) is None


def test_volume_source_and_mutable_parameters_round_trip(catalog):
    v = Volume(**{**vol(1).__dict__, "content_source": "snapshot:snap-x",
                  "mutable_parameters": (("readAheadKiB", "256"),)})
    stored = catalog.insert_volume(v)
    assert catalog.get_volume(stored.id).content_source == "snapshot:snap-x"
    catalog.set_mutable_parameters(stored.id, {"directIO": "false"})
    assert catalog.get_volume(stored.id).mutable_parameter_map == {"directIO": "false"}


def test_a_reader_never_waits_for_a_writer_holding_its_transaction(catalog):
    """Each thread has its own WAL connection and no Python lock spans a commit: a
    read in one thread completes while another thread is inside a write transaction
    (with the old single locked connection the read waited for the commit)."""
    import threading

    catalog.insert_volume(vol(1))
    in_tx, read_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def writer() -> None:
        with catalog._tx() as db:
            db.execute("UPDATE volumes SET capacity_bytes=capacity_bytes+1")
            in_tx.set()
            seen["reader_finished_inside_tx"] = read_done.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    assert in_tx.wait(30)
    before = catalog.get_volume(vol(1).id)  # the last commit, not the open write
    read_done.set()
    t.join()
    assert seen["reader_finished_inside_tx"] is True
    assert before is not None and before.capacity_bytes == vol(1).capacity_bytes
    assert catalog.get_volume(vol(1).id).capacity_bytes == vol(1).capacity_bytes + 1


def test_writes_from_many_threads_all_land_and_close_closes_every_connection(tmp_path):
    import threading

    cat = Catalog(str(tmp_path / "catalog.db"))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            cat.insert_volume(vol(i))
            assert cat.get_volume(vol(i).id) is not None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cat.volume_count() == 8
    cat.close()
    with pytest.raises(CatalogError):
        cat.get_volume(vol(1).id)
    reopened = Catalog(str(tmp_path / "catalog.db"))
    try:
        assert sorted(reopened.volume_states()) == sorted(vol(i).id for i in range(1, 9))
    finally:
        reopened.close()


def test_a_version_1_catalog_is_migrated_and_its_volumes_keep_512_byte_blocks(tmp_path):
    """Volumes recorded before block sizes were (schema 1) were attached with 512-byte
    blocks and keep them; new rows record theirs."""
    path = str(tmp_path / "c.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE volumes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL UNIQUE, capacity_bytes INTEGER NOT NULL, fs_type TEXT NOT NULL,
            provisioning TEXT NOT NULL, parameters TEXT NOT NULL, state TEXT NOT NULL,
            created_at REAL NOT NULL, content_source TEXT NOT NULL DEFAULT '',
            mutable_parameters TEXT NOT NULL DEFAULT '{}');
        PRAGMA user_version=1;
    """)
    old = vol(1)
    db.execute("INSERT INTO volumes (id, name, capacity_bytes, fs_type, provisioning,"
               " parameters, state, created_at) VALUES (?,?,?,?,?,?,?,?)",
               (old.id, old.name, old.capacity_bytes, old.fs_type, old.provisioning.value,
                '{"fsType": "ext4"}', old.state.value, old.created_at))
    db.commit()
    db.close()
    cat = Catalog(path)
    try:
        assert cat.get_volume(old.id).block_size == 512
        from dataclasses import replace

        new = cat.insert_volume(replace(vol(2), block_size=4096))
        assert cat.get_volume(new.id).block_size == 4096
    finally:
        cat.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == \
        SCHEMA_VERSION == 2

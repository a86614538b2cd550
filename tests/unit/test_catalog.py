"""Unit tests of the SQLite catalog (a real database file in a temp dir)."""

import sqlite3

import pytest

from csi_py.core.model import (
    AccessMode,
    AccessType,
    Attachment,
    Provisioning,
    Staging,
    StagingState,
    Volume,
    VolumeState,
)
from csi_py.state.catalog import SCHEMA_VERSION, Catalog, CatalogError, NameTaken


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

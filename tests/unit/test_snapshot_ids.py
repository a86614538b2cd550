"""Snapshot ids that carry their node (domain/snapshot_ids.py): the forms, the 128-byte
limit whatever the node id, and hostile ids that must parse as nothing or as a plain
key, never as a path."""

from __future__ import annotations

import pytest

from csi_py.core.pool import Pool
from csi_py.domain import snapshot_ids as ids

KEY = "snap-" + "0123456789abcdef" * 2


def test_a_plain_node_id_is_written_into_the_id():
    sid = ids.new_snapshot_id("worker-1.example")
    assert sid.endswith(".worker-1.example") and len(sid) == len(KEY) + len(".worker-1.example")
    parts = ids.parse(sid)
    assert parts is not None and parts.node == "worker-1.example" and not parts.digest
    assert ids.file_key(sid) == sid.split(".", 1)[0]
    assert ids.foreign_owner(sid, "worker-1.example") is None
    assert ids.foreign_owner(sid, "worker-2") == "node 'worker-1.example'"


@pytest.mark.parametrize("node", [
    "n" * (ids.MAX_LITERAL_NODE_BYTES + 1),  # plain but too long to fit
    "n" * 128, "x" * 256,                    # the config's and the spec's node id limits
    "node:with/odd chars", "-leading-dash", "é-node", "a\x00b",
])
def test_other_node_ids_are_written_as_a_digest_and_ids_stay_within_128_bytes(node):
    sid = ids.new_snapshot_id(node)
    assert len(sid.encode()) <= 128
    parts = ids.parse(sid)
    assert parts is not None and not parts.node and parts.digest == ids.node_digest(node)
    assert ids.foreign_owner(sid, node) is None
    owner = ids.foreign_owner(sid, "someone-else")
    assert owner == f"another node (node id digest {ids.node_digest(node)})"


def test_the_longest_plain_node_id_fits_exactly():
    node = "n" * ids.MAX_LITERAL_NODE_BYTES
    sid = ids.new_snapshot_id(node)
    assert len(sid.encode()) == 128 and ids.parse(sid).node == node  # type: ignore[union-attr]


def test_old_style_ids_name_no_node():
    parts = ids.parse(KEY)
    assert parts == ids.SnapshotIdParts(KEY) and not parts.names_a_node
    assert ids.file_key(KEY) == KEY
    assert ids.foreign_owner(KEY, "any-node") is None


HOSTILE = [
    KEY + ".", KEY + "..", KEY + "./../../etc/passwd", KEY + "./x", KEY + ".a/b",
    KEY + ".a\x00", KEY + ".a\n", KEY + ".-x", KEY + "._x", KEY + ". x", KEY + ".é",
    KEY + ".n" + "n" * ids.MAX_LITERAL_NODE_BYTES, KEY + "~", KEY + "~" + "0" * 23,
    KEY + "~" + "0" * 25, KEY + "~" + "G" * 24, KEY + "~" + "A" * 24, KEY + ".a~" + "0" * 24,
    KEY + "~" + "0" * 24 + ".a", "snap-" + "0" * 31 + ".a", "SNAP-" + "0" * 32 + ".a",
    "snap-" + "0" * 32 + "0.a", "snap-../../x.a", " " + KEY + ".a", KEY + ".a ", "",
    "vol-" + "0" * 32 + ".a", "group-" + "0" * 32 + ".a",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_are_no_snapshot_ids_and_never_become_paths(bad, tmp_path):
    assert ids.parse(bad) is None and not ids.is_snapshot_id(bad)
    assert ids.foreign_owner(bad, "a") is None
    with pytest.raises(Exception, match="malformed"):
        Pool(str(tmp_path)).snapshot_path(bad)


def test_paths_come_from_the_key_alone(tmp_path):
    pool = Pool(str(tmp_path))
    for sid in (KEY, KEY + ".node-a", KEY + "~" + "f" * 24):
        assert pool.snapshot_path(sid) == str(tmp_path / "snapshots" / (KEY + ".img"))

"""Snapshot ids that say which node holds the snapshot. Pure functions.

A snapshot is a file in one node's pool, and in the distributed layout every node runs
its own driver with its own catalog, so a driver asked about a snapshot it does not hold
cannot look it up anywhere. The id itself therefore carries its node:

- ``snap-<32 hex>.<node id>`` when the node id is plain (letters, digits, ``.``, ``_``,
  ``-``, starting with a letter or digit) and short enough for the whole id to stay
  within the CSI spec's 128-byte limit for strings (node ids up to 90 bytes: every
  Kubernetes node name we have seen);
- ``snap-<32 hex>~<24 hex>`` otherwise: the first 96 bits of the node id's SHA-256.
  A driver can then tell only that the snapshot is not its own, not whose it is;
- ``snap-<32 hex>`` for snapshots cut before ids carried their node (the node is
  unknown: only the driver that holds one can answer for it).

Only the ``snap-<32 hex>`` part (the *key*) ever names a file; the node part is never
turned into a path. Two ids with the same key but other node parts are different ids:
the catalog is looked up by the whole id.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from csi_py.domain.limits import MAX_STRING_BYTES

_KEY = r"snap-[0-9a-f]{32}"
_KEY_LENGTH = len("snap-") + 32
# The longest node id that fits literally: the key, the ".", the node id, 128 bytes.
MAX_LITERAL_NODE_BYTES = MAX_STRING_BYTES - _KEY_LENGTH - 1
_PLAIN_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGEST_HEX = 24
_ID = re.compile(
    rf"(?P<key>{_KEY})"
    rf"(?:\.(?P<node>[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_LITERAL_NODE_BYTES - 1}}})"
    rf"|~(?P<digest>[0-9a-f]{{{_DIGEST_HEX}}}))?"
)


@dataclass(frozen=True)
class SnapshotIdParts:
    """A well-formed snapshot id taken apart. ``node`` is the node id written in it,
    ``digest`` the node id's digest; both are empty for an old-style id."""

    key: str
    node: str = ""
    digest: str = ""

    @property
    def names_a_node(self) -> bool:
        return bool(self.node or self.digest)


def node_digest(node_id: str) -> str:
    """The digest form of a node id (see the module docstring)."""
    return hashlib.sha256(node_id.encode()).hexdigest()[:_DIGEST_HEX]


def node_suffix(node_id: str) -> str:
    """What follows the key in the ids of snapshots cut on `node_id`: ``.<node id>``
    when it fits and is plain, else ``~<digest>``. Never raises."""
    if _PLAIN_NODE.fullmatch(node_id) and len(node_id.encode()) <= MAX_LITERAL_NODE_BYTES:
        return "." + node_id
    return "~" + node_digest(node_id)


def new_snapshot_id(node_id: str) -> str:
    """A fresh snapshot id naming `node_id`; at most 128 bytes whatever the node id."""
    return "snap-" + uuid.uuid4().hex + node_suffix(node_id)


def parse(value: str) -> SnapshotIdParts | None:
    """The parts of a snapshot id in any of the three forms, or None for anything
    else (which then names no snapshot of ours). Never raises."""
    match = _ID.fullmatch(value)
    if match is None:
        return None
    return SnapshotIdParts(match["key"], match["node"] or "", match["digest"] or "")


def is_snapshot_id(value: str) -> bool:
    return parse(value) is not None


def file_key(value: str) -> str:
    """The part of a snapshot id that names its files (image, record). Other ids are
    returned unchanged. The caller has validated `value`."""
    parts = parse(value)
    return parts.key if parts else value


def foreign_owner(value: str, node_id: str) -> str | None:
    """When `value` is a snapshot id that names a node other than `node_id`, a phrase
    for messages saying which node (``node 'a'``, or, for the digest form, ``another
    node (node id digest ...)``); None when it names `node_id`, names no node (an
    old-style id) or is no snapshot id at all. Never raises."""
    parts = parse(value)
    if parts is None or not parts.names_a_node:
        return None
    if parts.node:
        return None if parts.node == node_id else f"node {parts.node!r}"
    if parts.digest == node_digest(node_id):
        return None
    return f"another node (node id digest {parts.digest})"

"""Where volumes and snapshots live. A csi-py instance serves one node: its volumes and
snapshots are files in that node's pool, so both are usable only there (one topology
segment, ``<topology key>: <node id>``). Pure functions."""

from __future__ import annotations

from csi_py.config import Config
from csi_py.domain.errors import ResourceExhausted, Subject, shown
from csi_py.domain.snapshot_ids import foreign_owner


def topology_matches(segments: dict[str, str], key: str, node_id: str) -> bool:
    """A topology names our node if it has our key with our node id, or lacks our key."""
    return segments.get(key, node_id) == node_id


def require_here(subject: Subject, requisite: list[dict[str, str]], where: Config,
                 snapshot_id: str = "") -> None:
    """Raise ResourceExhausted (the spec's code for topology that cannot be met) when
    ``requisite`` is given and none of its topologies names this node. With
    ``snapshot_id`` (a restore), the message says the snapshot lives on this node, so
    whoever asked for a restore elsewhere learns where it can be done."""
    if not requisite or any(topology_matches(t, where.topology_key, where.node_id)
                            for t in requisite):
        return
    if snapshot_id:
        raise ResourceExhausted(
            f"snapshot {snapshot_id} lives on node {where.node_id!r}"
            f" ({where.topology_key}={where.node_id}) and can be restored only there, not"
            f" in the requested topology {requisite}; restore it on node {where.node_id!r}",
            subject=subject,
        )
    raise ResourceExhausted(
        f"the requested topology {requisite} does not include node"
        f" {where.node_id!r}, the only node this driver instance serves",
        subject=subject,
    )


def snapshot_owner_elsewhere(snapshot_id: str, where: Config) -> str | None:
    """When `snapshot_id` names another node than this one, the words for where it
    lives (``lives on node 'a', not on node 'b' that this driver serves``), to follow
    the snapshot's subject; None when it may be ours (it names this node, or no node).
    Never raises."""
    owner = foreign_owner(snapshot_id, where.node_id)
    if owner is None:
        return None
    return (f"lives on {owner}, not on node {where.node_id!r} that"
            " this driver serves (a snapshot is a file in the pool of the node that cut it)")


def restore_there(owner_text: str, snapshot_id: str, where: Config) -> str:
    """The words for a restore from a snapshot that lives elsewhere: which snapshot,
    `owner_text` (from `snapshot_owner_elsewhere`) and the advice. Pure."""
    owner = foreign_owner(snapshot_id, where.node_id) or ""
    if not owner.startswith("node "):
        owner = "the node that cut it"  # an id with a digest: the node cannot be named
    return (f"source snapshot {shown(snapshot_id)} {owner_text}; restore it on {owner}:"
            " with a WaitForFirstConsumer StorageClass, place the pod that uses the new PVC"
            " there (a nodeSelector on kubernetes.io/hostname), so that node's provisioner"
            " and driver restore it")

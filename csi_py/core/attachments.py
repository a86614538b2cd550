"""Attachments of volumes to nodes (ControllerPublish/Unpublish): records in the
catalog, and the publish_context the node side reads back."""

from __future__ import annotations

from dataclasses import dataclass

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.capacity import Space
from csi_py.core.crashpoints import crash_point
from csi_py.core.locks import KeyedTryLock
from csi_py.core.rules import check_capability
from csi_py.core.volumes import Volumes
from csi_py.domain import errors as e
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import Attachment, Capability
from csi_py.state.catalog import Catalog

PUBLISH_CONTEXT_NODE = "node"
PUBLISH_CONTEXT_READONLY = "readonly"


@dataclass(eq=False)
class Attachments:
    """Which node each volume is published to; a loop device lives on one node, so a
    volume is published to at most one."""

    config: Config
    catalog: Catalog
    locks: KeyedTryLock
    space: Space
    volumes: Volumes

    def publish(
        self, volume_id: str, node_id: str, cap: Capability | None, readonly: bool
    ) -> dict[str, str]:
        """Attach a volume to a node: record it and return the publish_context.

        Idempotent for the same arguments. Raises InvalidArgument, NotFound (volume or
        node), AlreadyExists (attached here with other arguments), FailedPrecondition
        (attached elsewhere in a single-node mode), ResourceExhausted (node limit).
        """
        v.require(volume_id, "volume_id")
        v.require(node_id, "node_id")
        if cap is None:
            raise e.InvalidArgument("volume_capability is required",
                                    subject=volume_subject(volume_id))
        check_capability(cap, self.config.filesystems)
        with self.locks.hold(volume_id, "ControllerPublishVolume"):
            return self._publish_locked(volume_id, node_id, cap, readonly)

    def _publish_locked(
        self, volume_id: str, node_id: str, cap: Capability, readonly: bool
    ) -> dict[str, str]:
        volume = self.volumes.get_ready_volume(volume_id)
        if node_id != self.config.node_id:
            raise e.NotFound(
                f"unknown: volume {volume_id} lives on node"
                f" {self.config.node_id!r} and cannot be reached from elsewhere",
                subject=e.Subject("node", id=node_id),
            )
        wanted = Attachment(volume.id, node_id, readonly, cap.access_mode, cap.access_type)
        context = {
            PUBLISH_CONTEXT_NODE: node_id,
            PUBLISH_CONTEXT_READONLY: "true" if readonly else "false",
        }
        for att in self.catalog.attachments_of(volume_id):
            if att.node_id == node_id:
                if att == wanted:
                    return context
                raise e.AlreadyExists(
                    f"already published to node {node_id} with"
                    f" readonly={att.readonly}, mode {att.access_mode.value},"
                    f" {att.access_type.value} access",
                    subject=volume_subject(volume_id),
                )
            raise e.FailedPrecondition(
                f"published to node {att.node_id} in mode"
                f" {att.access_mode.value}; unpublish it there first",
                subject=volume_subject(volume_id),
            )
        limit = self.config.max_volumes_per_node
        if limit and self.catalog.attachment_count(node_id) >= limit:
            raise e.ResourceExhausted(
                f"already has {limit} volumes published, its maximum",
                subject=e.Subject("node", id=node_id),
            )
        self.catalog.put_attachment(wanted)
        crash_point("attach.recorded")
        return context

    def unpublish(self, volume_id: str, node_id: str) -> None:
        """Forget an attachment (or all of a volume's when node_id is empty). Idempotent:
        an unknown volume or node is success. Raises InvalidArgument, Aborted,
        Unavailable (the pool has failed)."""
        v.require(volume_id, "volume_id")
        if not v.is_volume_id(volume_id):
            return
        with self.locks.hold(volume_id, "ControllerUnpublishVolume"):
            # The node side (NodeUnpublish, NodeUnstage) works on a failed pool, so
            # pods are released; only this record waits for the repair.
            with self.space.failure_explained(volume_subject(volume_id)):
                for att in self.catalog.attachments_of(volume_id):
                    if not node_id or att.node_id == node_id:
                        self.catalog.remove_attachment(volume_id, att.node_id)
                        crash_point("detach.removed")

    def published_nodes(self, volume_id: str) -> list[str]:
        """The nodes a volume is published to. Read-only; never raises for an unknown
        volume (the answer is empty)."""
        return [a.node_id for a in self.catalog.attachments_of(volume_id)]

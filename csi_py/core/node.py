"""The CSI node service for the node this process runs on: each call checks its request,
takes the volume's lock and hands the work to its unlocked module (node_stage,
node_publish, node_expand), which decides on the kernel's view of the volume."""

from __future__ import annotations

from csi_py.core import validation as v
from csi_py.core.attachments import PUBLISH_CONTEXT_NODE, PUBLISH_CONTEXT_READONLY
from csi_py.core.node_expand import ExpandWork
from csi_py.core.node_publish import PublishWork
from csi_py.core.node_stage import StageWork
from csi_py.core.rules import check_capability
from csi_py.domain.errors import FailedPrecondition, InvalidArgument
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import Capability, CapacityRange


class NodeCore(StageWork, PublishWork, ExpandWork):
    """The CSI node service's logic. Every public call is idempotent; each raises the
    domain errors its docstring names, and Aborted while another call holds the
    volume."""

    def _required_capability(self, volume_id: str, cap: Capability | None) -> Capability:
        """The request's volume_capability, checked against what this driver serves.
        Pure; raises InvalidArgument when it is missing or not served."""
        if cap is None:
            raise InvalidArgument("volume_capability is required",
                                  subject=volume_subject(volume_id))
        check_capability(cap, self.config.filesystems)
        return cap

    def stage(
        self,
        volume_id: str,
        staging_path: str,
        cap: Capability | None,
        publish_context: dict[str, str],
    ) -> None:
        """Attach the volume's file to a loop device (direct I/O) and, for a mount
        volume, format it if blank and mount it at staging_path. Idempotent.

        Raises InvalidArgument, NotFound, AlreadyExists (staged here with another
        capability), FailedPrecondition (staged elsewhere, published for another node,
        device holds another filesystem), Aborted, Internal.
        """
        staging_path = _volume_and_path(volume_id, staging_path, "staging_target_path")
        self.check_outside_pool(staging_path, "staging_target_path")
        cap = self._required_capability(volume_id, cap)
        flags = v.check_mount_flags(cap.mount_flags)
        v.check_no_symlink(staging_path, "staging_target_path")
        node = publish_context.get(PUBLISH_CONTEXT_NODE, self.config.node_id)
        if node != self.config.node_id:
            raise FailedPrecondition(
                f"was published for node {node!r}, not this node"
                f" ({self.config.node_id!r})",
                subject=volume_subject(volume_id),
            )
        readonly = cap.access_mode.read_only or \
            publish_context.get(PUBLISH_CONTEXT_READONLY) == "true"
        with self.locks.hold(volume_id, "NodeStageVolume"):
            self.stage_locked(volume_id, staging_path, cap, flags, readonly)

    def unstage(self, volume_id: str, staging_path: str) -> None:
        """Unmount the staging path and detach the loop devices. Idempotent.

        The kernel is taken down first and the catalog written after: a full pool
        or one whose filesystem failed cannot keep kubelet from releasing a pod
        (a staging record that outlives its device is harmless and redone by the
        next stage or unstage).

        Raises InvalidArgument, NotFound (unknown volume), FailedPrecondition (still
        published somewhere), Aborted, Internal.
        """
        staging_path = _volume_and_path(volume_id, staging_path, "staging_target_path")
        with self.locks.hold(volume_id, "NodeUnstageVolume"):
            self.unstage_locked(volume_id, staging_path)

    def publish(self, volume_id: str, target_path: str, staging_path: str,
                cap: Capability | None, readonly: bool) -> None:
        """Bind the staged volume onto target_path (a directory for mount volumes, a
        file for block volumes), read-only when asked. Idempotent.

        Raises InvalidArgument, NotFound, FailedPrecondition (not staged),
        AlreadyExists (target holds something else), Aborted.
        """
        target_path = _volume_and_path(volume_id, target_path, "target_path")
        cap = self._required_capability(volume_id, cap)
        if not staging_path:
            # The spec's "Staging target path not set" (we have STAGE_UNSTAGE_VOLUME).
            raise FailedPrecondition(
                "staging_target_path is not set; this driver stages"
                " volumes, so call NodeStageVolume first and pass its path",
                subject=volume_subject(volume_id),
            )
        staging_path = v.check_absolute_path(staging_path, "staging_target_path")
        if target_path == staging_path or target_path.startswith(staging_path + "/") or \
                staging_path.startswith(target_path + "/"):
            raise InvalidArgument(
                f"target_path {target_path} and staging_target_path"
                f" {staging_path} are the same or nested; a publish there would hide the"
                " staging mount or be taken down with it", subject=volume_subject(volume_id))
        self.check_outside_pool(target_path, "target_path")
        flags = v.check_mount_flags(cap.mount_flags)
        v.check_no_symlink(target_path, "target_path")
        readonly = readonly or cap.access_mode.read_only
        with self.locks.hold(volume_id, "NodePublishVolume"):
            self.publish_locked(volume_id, target_path, staging_path, cap, flags, readonly)

    def unpublish(self, volume_id: str, target_path: str) -> None:
        """Unmount target_path and remove it. Idempotent.

        Raises InvalidArgument, NotFound (unknown volume), FailedPrecondition (busy).
        """
        target_path = _volume_and_path(volume_id, target_path, "target_path")
        # As for publish: a symlinked parent would make the rmdir below remove a
        # directory somewhere else.
        v.check_no_symlink(target_path, "target_path")
        with self.locks.hold(volume_id, "NodeUnpublishVolume"):
            self.unpublish_locked(volume_id, target_path)

    def expand(self, volume_id: str, volume_path: str, staging_path: str,
               capacity: CapacityRange | None = None, cap: Capability | None = None) -> int:
        """Make the node see the volume's new size: refresh its loop devices and grow
        its filesystem online. Returns the volume's capacity. Idempotent.

        Raises InvalidArgument (missing fields; a capability the volume does not have,
        the spec's "Exceeds capabilities"), NotFound (unknown volume, or not at
        volume_path), OutOfRange (a capacity_range the volume's size, which
        ControllerExpandVolume set, does not satisfy), FailedPrecondition (the
        filesystem cannot be grown online here), Aborted.
        """
        v.require(volume_id, "volume_id")
        v.require(volume_path, "volume_path")
        if cap is not None:
            check_capability(cap, self.config.filesystems)
        with self.locks.hold(volume_id, "NodeExpandVolume"):
            return self.expand_locked(volume_id, volume_path, capacity, cap)


def _volume_and_path(volume_id: str, path: str, field: str) -> str:
    """Check a node request's volume_id and the path named ``field``; returns the path
    as validation.check_absolute_path leaves it. Pure; raises InvalidArgument."""
    v.require(volume_id, "volume_id")
    return v.check_absolute_path(path, field)

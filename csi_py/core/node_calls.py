"""The node service as the CO calls it: inline (ephemeral) volumes routed apart from
staged ones, and a volume's health on this node assembled, so rpc/node.py only converts."""

from __future__ import annotations

from csi_py.core.controller import ControllerCore
from csi_py.core.ephemeral import EphemeralVolumes, is_ephemeral
from csi_py.core.health_conditions import HealthCondition, HealthReporter
from csi_py.core.node import NodeCore
from csi_py.core.validation import is_volume_id
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import Capability


class NodeCalls:
    """Routes the CSI node calls whose handling depends on the volume's kind."""

    def __init__(self, node: NodeCore, ephemeral: EphemeralVolumes,
                 controller: ControllerCore, health: HealthReporter) -> None:
        self.node = node
        self.ephemeral = ephemeral
        self.controller = controller
        self.health = health

    def publish(self, volume_id: str, target_path: str, staging_path: str,
                cap: Capability | None, readonly: bool,
                volume_context: dict[str, str]) -> None:
        """NodePublishVolume: an inline volume (its volume context says so) is made,
        staged and published here; any other is bound from its staging path.
        Idempotent; raises what EphemeralVolumes.publish and NodeCore.publish raise."""
        if is_ephemeral(volume_context):
            self.ephemeral.publish(volume_id, target_path, cap, readonly, volume_context)
        else:
            self.node.publish(volume_id, target_path, staging_path, cap, readonly)

    def unpublish(self, volume_id: str, target_path: str) -> None:
        """NodeUnpublishVolume: kubelet names inline volumes itself ("csi-<hash>"),
        never like ours ("vol-..."), so a handle that is not a volume id and names an
        inline volume takes that one down (and deletes it). Idempotent; raises what
        EphemeralVolumes.unpublish and NodeCore.unpublish raise."""
        if volume_id and not is_volume_id(volume_id) and \
                self.ephemeral.find(volume_id) is not None:
            self.ephemeral.unpublish(volume_id, target_path)
        else:
            self.node.unpublish(volume_id, target_path)

    def volume_health(self, volume_id: str, publish_path: str,
                      staging_path: str) -> tuple[str, tuple[HealthCondition, ...]]:
        """NodeGetVolumeHealth: the volume's id and its conditions as this node sees
        them. Read-only. Raises NotFound (unknown volume), InvalidArgument, Unavailable
        naming the failed pool when the catalog cannot be read (a shut-down pool refuses
        a new catalog connection, and a gRPC thread may need one)."""
        with self.controller.space.failure_explained(volume_subject(volume_id)):
            volume = self.controller.get_ready_volume(volume_id)
        return volume.id, self.health.node_volume_conditions(volume, publish_path,
                                                             staging_path)

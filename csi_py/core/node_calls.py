"""The node service as the CO calls it: inline (ephemeral) volumes routed apart from
staged ones, and a volume's health on this node assembled, so rpc/node.py only converts."""

from __future__ import annotations

from csi_py.core.controller import ControllerCore
from csi_py.core.ephemeral import EphemeralVolumes, is_ephemeral
from csi_py.core.health_conditions import (
    POOL_FAILED,
    HealthCondition,
    HealthReporter,
    VolumeHealthType,
)
from csi_py.core.node import NodeCore
from csi_py.core.validation import is_volume_id
from csi_py.domain.model import Capability
from csi_py.state.errors import CatalogError


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
        them. Read-only. Raises NotFound (unknown volume), InvalidArgument."""
        try:
            volume = self.controller.volumes.get_ready_volume(volume_id)
        except CatalogError:
            # A shut-down pool refuses a new catalog connection, which a gRPC thread may
            # need; the pool's failure is the volume's condition all the same, as
            # volume_conditions reports it when the catalog can still be read.
            state = self.controller.space.state()
            if not state.failed:
                raise
            return volume_id, (HealthCondition(VolumeHealthType.INACCESSIBLE, POOL_FAILED,
                                               state.message),)
        return volume.id, self.health.node_volume_conditions(volume, publish_path,
                                                             staging_path)

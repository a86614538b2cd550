"""CSI ephemeral inline volumes: a pod names the volume in its own spec, kubelet calls
only NodePublishVolume and NodeUnpublishVolume, and the volume lives and dies with
the pod. We build it from the same parts as a persistent volume: create, stage (into
a private directory in the pool) and publish; unpublish undoes all three."""

from __future__ import annotations

import logging
import os

from csi_py.config import ConfigError, parse_size
from csi_py.core import validation as v
from csi_py.core.node import NodeCore
from csi_py.core.pool import Pool
from csi_py.core.rules import IGNORED_PARAMETER_PREFIXES, PARAM_FS_TYPE
from csi_py.core.volumes import Volumes
from csi_py.domain.errors import DriverError, InvalidArgument, NotFound, Subject
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability, CapacityRange, Volume
from csi_py.linux import targets
from csi_py.linux.errors import LinuxError
from csi_py.state.catalog import Catalog

log = logging.getLogger(__name__)

EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
ATTR_SIZE = "size"
ATTRIBUTES = (ATTR_SIZE, PARAM_FS_TYPE)
NAME_PREFIX = "ephemeral-"


def is_ephemeral(volume_context: dict[str, str]) -> bool:
    return volume_context.get(EPHEMERAL_KEY) == "true"


class EphemeralVolumes:
    def __init__(self, catalog: Catalog, pool: Pool, volumes: Volumes,
                 node: NodeCore) -> None:
        self.catalog = catalog
        self.pool = pool
        self.volumes = volumes
        self.node = node

    @property
    def staging_root(self) -> str:
        return self.pool.ephemeral_dir

    def _staging(self, volume: Volume) -> str:
        return os.path.join(self.staging_root, volume.id)

    def publish(
        self,
        handle: str,
        target_path: str,
        cap: Capability | None,
        readonly: bool,
        attributes: dict[str, str],
    ) -> Volume:
        """Create, stage and publish the inline volume `handle` (kubelet's volume id)
        at target_path. Idempotent. Undoes what it did when a step fails.

        Raises InvalidArgument (bad attributes, block access), and what the create,
        stage and publish steps raise.
        """
        v.check_string(handle, "volume_id", limit=v.MAX_STRING_BYTES - len(NAME_PREFIX))
        # Checked before anything is made: a target refused after the create and stage
        # would also be refused by the undo's unpublish, leaving the volume staged.
        target_path = v.check_absolute_path(target_path, "target_path")
        v.check_no_symlink(target_path, "target_path")
        if cap is None:
            raise InvalidArgument("volume_capability is required", subject=volume_subject(handle))
        if cap.access_type is not AccessType.MOUNT:
            raise InvalidArgument("inline volumes are filesystems, not block",
                                  subject=volume_subject(handle))
        unknown = sorted(k for k in attributes
                         if k not in ATTRIBUTES and k != EPHEMERAL_KEY
                         and not k.startswith(IGNORED_PARAMETER_PREFIXES))
        if unknown:
            raise InvalidArgument(
                f"unknown volumeAttributes {unknown}; inline volumes take"
                f" {list(ATTRIBUTES)}",
                subject=volume_subject(handle),
            )
        try:
            size = parse_size(attributes[ATTR_SIZE]) if ATTR_SIZE in attributes else 0
        except ConfigError as exc:
            raise InvalidArgument(f"volumeAttributes size: {exc}",
                                  subject=volume_subject(handle)) from None
        params = {PARAM_FS_TYPE: attributes[PARAM_FS_TYPE]} if PARAM_FS_TYPE in attributes else {}
        volume = self.volumes.create_volume(
            NAME_PREFIX + handle, CapacityRange(size, 0), [cap], params, {}, []
        )
        staging = self._staging(volume)
        targets.make_staging_dir(self.staging_root, mode=0o700)
        try:
            self.node.stage(volume.id, staging, cap, {})
            self.node.publish(volume.id, target_path, staging, cap, readonly)
        except (DriverError, LinuxError, OSError):
            self._remove(volume, target_path)
            raise
        log.info("inline volume %s (%s) published at %s", handle, volume.id, target_path)
        return volume

    def find(self, handle: str) -> Volume | None:
        if len((NAME_PREFIX + handle).encode()) > v.MAX_STRING_BYTES:
            return None
        return self.catalog.get_volume_by_name(NAME_PREFIX + handle)

    def unpublish(self, handle: str, target_path: str) -> None:
        """Unpublish, unstage and delete the inline volume `handle`. Idempotent.
        Raises NotFound when there is no such inline volume."""
        volume = self.find(handle)
        if volume is None:
            raise NotFound("does not exist", subject=Subject("inline volume", id=handle))
        self._remove(volume, target_path)
        log.info("inline volume %s (%s) removed", handle, volume.id)

    def _remove(self, volume: Volume, target_path: str) -> None:
        staging = self._staging(volume)
        self.node.unpublish(volume.id, target_path)
        self.node.unstage(volume.id, staging)
        self.volumes.delete_volume(volume.id)
        targets.remove_dir(staging)

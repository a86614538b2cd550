"""NodePublishVolume and NodeUnpublishVolume, unlocked: bind a staged volume onto a target
path (read-only when asked) and take it off again, deciding on one VolumeView."""

from __future__ import annotations

from csi_py.core import node_rules as rules
from csi_py.core.crashpoints import crash_point
from csi_py.core.node_base import NodeBase, log
from csi_py.domain.errors import FailedPrecondition
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability
from csi_py.linux import targets
from csi_py.linux.errors import LinuxError

# Flags that may differ per publish; they are applied to the bind mount.
BIND_FLAGS = frozenset({"ro", "nosuid", "nodev", "noexec"})


class PublishWork(NodeBase):
    def publish_locked(
        self,
        volume_id: str,
        target_path: str,
        staging_path: str,
        cap: Capability,
        flags: tuple[str, ...],
        readonly: bool,
    ) -> None:
        """The work of NodeCore.publish, under the volume's lock. Idempotent."""
        self.controller.volumes.get_ready_volume(volume_id)
        record = self.catalog.get_staging(volume_id)
        if record is None or not record.staged or not record.at(staging_path):
            raise FailedPrecondition(
                f"is not staged at {staging_path}; call NodeStageVolume"
                " first",
                subject=volume_subject(volume_id),
            )
        if record.access_type is not cap.access_type:
            raise FailedPrecondition(
                f"is staged for {record.access_type.value} access,"
                f" not {cap.access_type.value}",
                subject=volume_subject(volume_id),
            )
        view = self.view(volume_id, record, at=target_path)
        device = rules.staged_device(view, volume_id)
        if rules.check_publish(view, volume_id, device, staging_path, target_path,
                               cap.access_type, cap.access_mode, readonly):
            return
        bind_flags = [f for f in flags if f in BIND_FLAGS and f != "ro"]
        extra = ""
        if cap.access_type is AccessType.MOUNT:
            targets.make_dir(target_path)
            source = staging_path
        else:
            targets.make_file(target_path)
            source = device.path
            if readonly and not device.read_only:
                # A read-only bind mount does not stop writes through a device node;
                # only a read-only block device does. So a read-only publish of a
                # volume staged read-write gets a read-only loop device of its own
                # (direct I/O on both keeps them coherent), remembered so that its
                # unpublish and the unstage find it without a scan.
                extra = source = self.host.loops.attach(
                    view.image, direct_io=self.config.direct_io,
                    read_only=True, block_size=device.logical_block_size,
                ).path
                self.kernel.remember(view.image, extra)
        crash_point("publish.target_made")
        try:
            self.host.mounts.bind_mount(source, target_path, read_only=readonly,
                                        extra_flags=bind_flags)
            crash_point("publish.bound")
        except LinuxError:
            targets.remove_target(target_path)
            if extra:
                self.host.loops.detach(extra)
                self.kernel.forget(view.image, extra)
            raise

    def unpublish_locked(self, volume_id: str, target_path: str) -> None:
        """The work of NodeCore.unpublish, under the volume's lock. Idempotent."""
        record = self.staging_for_teardown(volume_id, "unpublish")
        view = self.view(volume_id, record, at=target_path)
        plan = rules.plan_unpublish(view, target_path, record)
        if plan.unmounts == 0 and plan.other_mount:
            # Another volume's mount: this volume is not published here.
            log.warning("volume %s: unpublish at %s, which holds another mount;"
                        " left alone", volume_id, target_path)
            return
        self.unmount(target_path, volume_id, plan.unmounts)
        if plan.detach:
            # The read-only device made for this block publish goes with it.
            self.host.loops.detach(plan.detach)
            self.kernel.forget(view.image, plan.detach)
        if plan.unmounts:
            crash_point("unpublish.unmounted")
        if plan.other_mount:
            log.warning("volume %s: %s still holds another mount; left alone",
                        volume_id, target_path)
            return
        targets.remove_target(target_path)

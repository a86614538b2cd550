"""NodeStageVolume and NodeUnstageVolume, unlocked: attach the image to a loop device,
format it if blank and mount it at the staging path; and take all of that down again."""

from __future__ import annotations

from dataclasses import replace

from csi_py.core import node_rules as rules
from csi_py.core.crashpoints import crash_point
from csi_py.core.mutable import (
    DEFAULT_READ_AHEAD_KIB,
    READ_AHEAD_KIB,
    apply_mutable,
    direct_io_wanted,
)
from csi_py.core.node_base import NodeBase, log
from csi_py.domain.errors import AlreadyExists, FailedPrecondition, Subject
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability, Staging, StagingState, Volume
from csi_py.linux import files, targets
from csi_py.linux.errors import DeviceBusy
from csi_py.linux.filesystems import FILESYSTEMS
from csi_py.linux.loop import LoopDevice
from csi_py.linux.volume_view import mount_is_of
from csi_py.state.errors import CatalogError
from csi_py.state.records import FORMATTED, FORMATTING

# A staged filesystem never needs device nodes or setuid programs from the volume.
STAGE_BASE_FLAGS = ("nosuid", "nodev")


class StageWork(NodeBase):
    def stage_locked(
        self,
        volume_id: str,
        staging_path: str,
        cap: Capability,
        flags: tuple[str, ...],
        readonly: bool,
    ) -> None:
        """The work of NodeCore.stage, under the volume's lock. Idempotent."""
        volume = self.controller.volumes.get_ready_volume(volume_id)
        fs_type = self.fs_type_for(volume, cap) if cap.access_type is AccessType.MOUNT else ""
        wanted = Staging(volume_id, staging_path, cap.access_type, fs_type, flags, readonly,
                         "", StagingState.STAGING)
        previous = self.catalog.get_staging(volume_id)
        if previous is not None:
            rules.check_compatible_staging(previous, wanted)
        if fs_type and volume.fs_type and fs_type != volume.fs_type:
            # The spec's "Exceeds capabilities": the volume was made for another
            # filesystem (ValidateVolumeCapabilities does not confirm this either).
            raise FailedPrecondition(
                f"was created for {volume.fs_type}; it cannot be"
                f" staged as {fs_type}",
                subject=volume_subject(volume_id),
            )
        # With no staging record nothing of ours is attached: a stage records its
        # intent before it attaches, an unstage deletes the record only after the
        # detach, and start-up adopts what the kernel shows. So only a retry (a
        # record) looks for a device, and the recorded one is checked first.
        device = self.view(volume_id, previous).staged if previous else None
        self.catalog.put_staging(wanted if previous is None else
                                 replace(previous, state=StagingState.STAGING))
        crash_point("stage.recorded")
        if device is None:
            # A read-only block stage gets a read-only device: nothing can write
            # through it. A read-only filesystem is enforced by its mount instead
            # (the device stays writable so a blank volume can still be formatted).
            mutable = volume.mutable_parameter_map
            device = self.host.loops.attach(
                self.pool.image_path(volume_id),
                direct_io=direct_io_wanted(mutable, self.config.direct_io),
                read_only=readonly and cap.access_type is AccessType.BLOCK,
                block_size=volume.block_size,
            )
            # Read-ahead outlives a detach and the next user of the device inherits
            # it, so every attach sets it: the volume's own value or the default.
            read_ahead = mutable.get(READ_AHEAD_KIB, str(DEFAULT_READ_AHEAD_KIB))
            apply_mutable(self.host, device.path, {READ_AHEAD_KIB: read_ahead})
            log.info("volume %s attached to %s (direct_io=%s)", volume_id, device.path,
                     device.direct_io)
        crash_point("stage.attached")
        if cap.access_type is AccessType.MOUNT:
            try:
                self._mount_staging(volume, device, staging_path, fs_type, flags, readonly)
            except BaseException:
                # Leave nothing half-done: a fresh attach is undone so a retry starts
                # clean (the record is kept, so unstage can also clean up).
                if not self._holds(staging_path, device) and self.detach_quietly(device):
                    # Only once detached: a record that outlives its device is
                    # harmless, a device without a record would be missed.
                    self.catalog.delete_staging(volume_id)
                raise
        self.catalog.put_staging(replace(wanted, device=device.path, state=StagingState.STAGED))
        crash_point("stage.committed")

    def _holds(self, path: str, device: LoopDevice) -> bool:
        """Whether the topmost mount at `path` is of `device` (this volume)."""
        entries = self.host.mounts.mounts_at(path)
        return bool(entries) and mount_is_of(entries[-1], device.path)

    def _mount_staging(
        self,
        volume: Volume,
        device: LoopDevice,
        staging_path: str,
        fs_type: str,
        flags: tuple[str, ...],
        readonly: bool,
    ) -> None:
        kind = FILESYSTEMS.get(fs_type)
        entries = self.host.mounts.mounts_at(staging_path)
        if entries:
            if mount_is_of(entries[-1], device.path):
                return  # already mounted: the retry of a stage that finished
            raise AlreadyExists(
                f"already has {entries[-1].source} mounted on it, not volume {volume.id}",
                subject=Subject("staging path", path=staging_path),
            )
        # A backing file with no data at all is blank for sure; only otherwise is the
        # device probed (blkid costs a fork, and most first stages are of new volumes).
        image = self.pool.image_path(volume.id)
        if self.records.format_state(volume.id) == FORMATTING:
            # A format that never finished (the process was killed during mkfs): the
            # device never held data, whatever signature the half-made filesystem
            # left on it, so it is formatted again.
            log.warning("volume %s: its last format was interrupted; formatting %s again",
                        volume.id, device.path)
            found = None
        else:
            found = None if files.allocated_bytes(image) == 0 else \
                self.host.fs.detect(device.path)
        if found is None:
            log.info("volume %s: formatting %s as %s", volume.id, device.path, fs_type)
            self.records.set_format(volume, FORMATTING)
            self.host.fs.format(device.path, fs_type)
            self.records.set_format(volume, FORMATTED)
            crash_point("stage.formatted")
        elif found != fs_type:
            raise FailedPrecondition(
                f"already holds a {found} filesystem; it was asked to be"
                f" staged as {fs_type}. Its data is left untouched.",
                subject=volume_subject(volume.id),
            )
        elif kind is not None and kind.grows_unmounted and not readonly and \
                self.host.fs.needs_grow(device.path, None, fs_type):
            # Expanded (or restored into a bigger volume) while not staged: ext4 grows
            # best before it is mounted (no CAP_SYS_RESOURCE needed).
            self.host.fs.grow(device.path, None, fs_type)
        targets.make_staging_dir(staging_path)
        options = list(dict.fromkeys(STAGE_BASE_FLAGS + flags))
        # xfs: nouuid, since clones and snapshots share their source's UUID.
        options += kind.mount_options if kind else ()
        self.host.mounts.mount(device.path, staging_path, fs_type, options, read_only=readonly)
        crash_point("stage.mounted")
        if kind is not None and not kind.grows_unmounted and not readonly and \
                self.host.fs.needs_grow(device.path, staging_path, fs_type):
            self.host.fs.grow(device.path, staging_path, fs_type)

    def unstage_locked(self, volume_id: str, staging_path: str) -> None:
        """The work of NodeCore.unstage, under the volume's lock. Idempotent."""
        record = self.staging_for_teardown(volume_id, "unstage")
        if record is not None and not record.at(staging_path):
            # "If the volume ... is not staged to the staging_target_path, the
            # Plugin MUST reply 0 OK"; its real staging is left alone.
            log.warning("volume %s: unstage at %s, but it is staged at %s; nothing done",
                        volume_id, staging_path, record.staging_path)
            return
        # The record names the staged device and this process remembers the read-only
        # extras it attached: each is read (and checked by identity) without a scan.
        view = self.view(volume_id, record)
        plan = rules.plan_unstage(view, volume_id, staging_path)
        if plan.unmounts:
            # A filesystem frozen by a capture that died stays frozen after its
            # unmount and keeps the device busy; thawing is harmless otherwise.
            self.thaw_quietly(staging_path)
        self.unmount(staging_path, volume_id, plan.unmounts)
        crash_point("unstage.unmounted")
        for device in plan.devices:
            try:
                self.host.loops.detach(device.path)
            except DeviceBusy as exc:
                raise FailedPrecondition(
                    f"loop device {device.path} is still in use ({exc})",
                    subject=volume_subject(volume_id),
                ) from exc
        self.kernel.forget(view.image)
        crash_point("unstage.detached")
        try:
            self.catalog.delete_staging(volume_id)
        except CatalogError as exc:
            log.warning("volume %s: unstaged, but the catalog could not record it (%s);"
                        " the stale record is dropped by the next stage or unstage",
                        volume_id, exc)
        self.pool.keep_catalog_reserve()

"""Node logic: stage (loop device + filesystem + mount), publish (bind mount), and
their reverses, plus stats. The kernel is asked what is attached and mounted; the
catalog only remembers what was asked for, so a restart loses nothing."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import replace

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.attachments import PUBLISH_CONTEXT_NODE, PUBLISH_CONTEXT_READONLY
from csi_py.core.capacity import check_range
from csi_py.core.controller import ControllerCore
from csi_py.core.crashpoints import crash_point
from csi_py.core.identity import backs, devices_on
from csi_py.core.locks import KeyedTryLock
from csi_py.core.mutable import (
    DEFAULT_READ_AHEAD_KIB,
    READ_AHEAD_KIB,
    apply_mutable,
    direct_io_wanted,
)
from csi_py.core.pool import Pool
from csi_py.core.rules import check_capability, check_volume_capability
from csi_py.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Capability,
    CapacityRange,
    Staging,
    StagingState,
    Volume,
    VolumeStats,
)
from csi_py.linux import Host, files
from csi_py.linux.errors import DeviceBusy, LinuxError
from csi_py.linux.filesystems import FILESYSTEMS
from csi_py.linux.loop import LoopDevice
from csi_py.linux.mount import MountEntry
from csi_py.state.catalog import Catalog
from csi_py.state.errors import CatalogError
from csi_py.state.records import FORMATTED, FORMATTING, Records

log = logging.getLogger(__name__)

# A staged filesystem never needs device nodes or setuid programs from the volume.
STAGE_BASE_FLAGS = ("nosuid", "nodev")
# Flags that may differ per publish; they are applied to the bind mount.
BIND_FLAGS = frozenset({"ro", "nosuid", "nodev", "noexec"})


def mount_is_of(entry: MountEntry, device: str) -> bool:
    """Whether a mount shows `device`: a filesystem on it (its mount table entry names
    the device as source, also for bind mounts of it and for btrfs, whose device numbers
    are anonymous), or the device node itself bind-mounted onto a file (a published
    block volume: a devtmpfs entry whose root is the node's name)."""
    if entry.source == device:
        return True
    return entry.root == "/" + os.path.basename(device) and entry.fs_type in ("devtmpfs", "tmpfs")


def mount_is_of_any(entry: MountEntry, devices: list[LoopDevice]) -> bool:
    return any(mount_is_of(entry, d.path) for d in devices)


class NodeCore:
    """The CSI node service's logic for the node this process runs on."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        pool: Pool,
        host: Host,
        locks: KeyedTryLock,
        controller: ControllerCore,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.host = host
        self.locks = locks
        self.controller = controller
        self.records = Records(pool.records_dir)

    # --- helpers -----------------------------------------------------------------------

    def _device_for(self, volume_id: str, hint: str = "") -> LoopDevice | None:
        """The loop device attached to this volume's backing file, if any. Checks the
        recorded device first (one sysfs read) before scanning all loop devices."""
        path = self.pool.image_path(volume_id)
        if hint:
            dev = self.host.loops.get(hint)
            if dev is not None and backs(dev, path):
                return dev
        found = [d for d in devices_on(self.host, path) if not d.backing_deleted]
        # A writable device is the staged one; read-only extras serve read-only publishes.
        found.sort(key=lambda d: d.read_only)
        return found[0] if found else None

    def _mount_at(self, path: str) -> MountEntry | None:
        entries = self.host.mounts.mounts_at(path)
        return entries[-1] if entries else None

    def _devices_of(self, volume_id: str, record: Staging | None = None) -> list[LoopDevice]:
        """Every loop device on this volume's backing file: the staged one and any
        read-only ones made for read-only block publishes. A staged filesystem has
        only its staged device, read with one sysfs lookup instead of a scan.

        Also a device whose backing file was deleted behind our back (ids are never
        reused, so it is this volume's): its mounts must still be found, reported and
        taken down."""
        path = self.pool.image_path(volume_id)
        if record is not None and record.access_type is AccessType.MOUNT and record.device:
            dev = self.host.loops.get(record.device)
            if dev is not None and backs(dev, path):
                return [dev]
        return devices_on(self.host, path)

    def _detached_device(self, record: Staging | None) -> str:
        """The device a staged volume was attached to, when the kernel has detached it
        since (LOOP_CLR_FD behind our back): free now, or its number attached to
        another file. The volume's mounts (a published block device) still name it,
        and they are this volume's to take down. "" otherwise."""
        if record is None or not record.device or not record.staged:
            return ""
        dev = self.host.loops.get(record.device)
        if dev is None or not backs(dev, self.pool.image_path(record.volume_id)):
            return record.device
        return ""

    def _check_outside_pool(self, path: str, field: str) -> None:
        v.check_outside(path, field, self.pool.contains, self.pool.root)

    def _fs_type_for(self, volume: Volume, cap: Capability) -> str:
        return cap.fs_type or volume.fs_type or self.config.default_fs_type

    # --- NodeStageVolume ---------------------------------------------------------------

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
        v.require(volume_id, "volume_id")
        staging_path = v.check_absolute_path(staging_path, "staging_target_path")
        self._check_outside_pool(staging_path, "staging_target_path")
        if cap is None:
            raise InvalidArgument(f"volume {volume_id}: volume_capability is required")
        check_capability(cap, self.config.filesystems)
        flags = v.check_mount_flags(cap.mount_flags)
        v.check_no_symlink(staging_path, "staging_target_path")
        node = publish_context.get(PUBLISH_CONTEXT_NODE, self.config.node_id)
        if node != self.config.node_id:
            raise FailedPrecondition(
                f"volume {volume_id} was published for node {node!r}, not this node"
                f" ({self.config.node_id!r})"
            )
        readonly = cap.access_mode.read_only or \
            publish_context.get(PUBLISH_CONTEXT_READONLY) == "true"
        with self.locks.hold(volume_id, "NodeStageVolume"):
            volume = self.controller.get_ready_volume(volume_id)
            fs_type = self._fs_type_for(volume, cap) if cap.access_type is AccessType.MOUNT else ""
            wanted = Staging(volume_id, staging_path, cap.access_type, fs_type, flags, readonly,
                             "", StagingState.STAGING)
            previous = self.catalog.get_staging(volume_id)
            if previous is not None:
                self._check_compatible_staging(previous, wanted)
            if fs_type and volume.fs_type and fs_type != volume.fs_type:
                # The spec's "Exceeds capabilities": the volume was made for another
                # filesystem (ValidateVolumeCapabilities does not confirm this either).
                raise FailedPrecondition(
                    f"volume {volume_id} was created for {volume.fs_type}; it cannot be"
                    f" staged as {fs_type}"
                )
            # With no staging record nothing of ours is attached: a stage records its
            # intent before it attaches, an unstage deletes the record only after the
            # detach, and start-up adopts what the kernel shows. So only a retry (a
            # record) looks for a device, and the recorded one is checked first.
            device = self._device_for(volume_id, previous.device) if previous else None
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
                    if not self._holds(staging_path, device) and \
                            self._detach_quietly(device):
                        # Only once detached: a record that outlives its device is
                        # harmless, a device without a record would be missed.
                        self.catalog.delete_staging(volume_id)
                    raise
            self.catalog.put_staging(replace(wanted, device=device.path, state=StagingState.STAGED))
            crash_point("stage.committed")

    def _check_compatible_staging(self, previous: Staging, wanted: Staging) -> None:
        if previous.state is not StagingState.STAGED:
            return  # an interrupted stage or unstage: redo it
        if previous.staging_path != wanted.staging_path:
            raise FailedPrecondition(
                f"volume {wanted.volume_id} is already staged at {previous.staging_path};"
                f" unstage it there before staging at {wanted.staging_path}"
            )
        if (previous.access_type, previous.fs_type, previous.mount_flags, previous.readonly) != (
            wanted.access_type, wanted.fs_type, wanted.mount_flags, wanted.readonly
        ):
            raise AlreadyExists(
                f"volume {wanted.volume_id} is staged at {wanted.staging_path} with another"
                f" capability ({_describe(previous)}); asked for {_describe(wanted)}"
            )

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
        current = self._mount_at(staging_path)
        if current is not None:
            if mount_is_of(current, device.path):
                return  # already mounted: the retry of a stage that finished
            raise AlreadyExists(
                f"staging path {staging_path} already has {current.source} mounted on it,"
                f" not volume {volume.id}"
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
                f"volume {volume.id} already holds a {found} filesystem; it was asked to be"
                f" staged as {fs_type}. Its data is left untouched."
            )
        elif kind is not None and kind.grows_unmounted and not readonly and \
                self.host.fs.needs_grow(device.path, None, fs_type):
            # Expanded (or restored into a bigger volume) while not staged: ext4 grows
            # best before it is mounted (no CAP_SYS_RESOURCE needed).
            self.host.fs.grow(device.path, None, fs_type)
        os.makedirs(staging_path, mode=0o750, exist_ok=True)
        options = list(dict.fromkeys(STAGE_BASE_FLAGS + flags))
        # xfs: nouuid, since clones and snapshots share their source's UUID.
        options += kind.mount_options if kind else ()
        self.host.mounts.mount(device.path, staging_path, fs_type, options, read_only=readonly)
        crash_point("stage.mounted")
        if kind is not None and not kind.grows_unmounted and not readonly and \
                self.host.fs.needs_grow(device.path, staging_path, fs_type):
            self.host.fs.grow(device.path, staging_path, fs_type)

    def _thaw_quietly(self, mount_point: str) -> None:
        try:
            self.host.fs.thaw(mount_point)
        except LinuxError as exc:
            log.warning("could not thaw %s: %s", mount_point, exc)

    def _detach_quietly(self, device: LoopDevice) -> bool:
        """Detach `device`; False (logged) when it cannot be. Never raises LinuxError."""
        try:
            self.host.loops.detach(device.path)
            return True
        except LinuxError as exc:
            log.warning("could not detach %s: %s", device.path, exc)
            return False

    # --- NodeUnstageVolume -------------------------------------------------------------

    def unstage(self, volume_id: str, staging_path: str) -> None:
        """Unmount the staging path and detach the loop device. Idempotent.

        The kernel is taken down first and the catalog written after: a full pool
        or one whose filesystem failed cannot keep kubelet from releasing a pod
        (a staging record that outlives its device is harmless and redone by the
        next stage or unstage).

        Raises InvalidArgument, NotFound (unknown volume), FailedPrecondition (still
        published somewhere), Aborted, Internal.
        """
        v.require(volume_id, "volume_id")
        staging_path = v.check_absolute_path(staging_path, "staging_target_path")
        with self.locks.hold(volume_id, "NodeUnstageVolume"):
            record = self._staging_for_teardown(volume_id, "unstage")
            if record is not None and not record.at(staging_path):
                # "If the volume ... is not staged to the staging_target_path, the
                # Plugin MUST reply 0 OK"; its real staging is left alone.
                log.warning("volume %s: unstage at %s, but it is staged at %s; nothing done",
                            volume_id, staging_path, record.staging_path)
                return
            # The record names the staged device: a staged filesystem's is read (and
            # checked by identity) without a scan of every loop device.
            devices = self._devices_of(volume_id, record)
            users = [m for m in self.host.mounts.list_mounts()
                     if mount_is_of_any(m, devices) and m.mount_point != staging_path]
            if users:
                raise FailedPrecondition(
                    f"volume {volume_id} is still published at"
                    f" {', '.join(m.mount_point for m in users)}; unpublish it first"
                )
            staged = self._mount_at(staging_path)
            if staged is not None and mount_is_of_any(staged, devices):
                # A filesystem frozen by a capture that died stays frozen after its
                # unmount and keeps the device busy; thawing is harmless otherwise.
                self._thaw_quietly(staging_path)
            for device in devices:
                self._unmount_ours(staging_path, volume_id, device)
            crash_point("unstage.unmounted")
            for device in devices:
                try:
                    self.host.loops.detach(device.path)
                except DeviceBusy as exc:
                    raise FailedPrecondition(
                        f"volume {volume_id}: loop device {device.path} is still in use ({exc})"
                    ) from exc
            crash_point("unstage.detached")
            try:
                self.catalog.delete_staging(volume_id)
            except CatalogError as exc:
                log.warning("volume %s: unstaged, but the catalog could not record it (%s);"
                            " the stale record is dropped by the next stage or unstage",
                            volume_id, exc)
            self.pool.keep_catalog_reserve()

    def _staging_for_teardown(self, volume_id: str, what: str) -> Staging | None:
        """The staging record of a volume being taken down. When the catalog cannot
        be read (the pool's filesystem failed) it is None: what is attached and
        mounted is still known to the kernel, which is all a teardown needs.
        Raises NotFound for a volume the catalog does not have."""
        if not v.is_volume_id(volume_id):
            raise NotFound(f"volume {volume_id!r} does not exist")
        try:
            if self.catalog.get_volume(volume_id) is None:
                raise NotFound(f"volume {volume_id!r} does not exist")
            return self.catalog.get_staging(volume_id)
        except CatalogError as exc:
            log.warning("volume %s: %s without the catalog: %s", volume_id, what, exc)
            return None

    def _holds(self, path: str, device: LoopDevice) -> bool:
        """Whether the topmost mount at `path` is of `device` (this volume)."""
        entry = self._mount_at(path)
        return entry is not None and mount_is_of(entry, device.path)

    def _unmount_ours(self, path: str, volume_id: str, device: LoopDevice) -> None:
        """Take this volume's mounts off `path`, never another volume's."""
        # Mounts may be stacked at one path; take them off one at a time.
        for _ in range(16):
            if not self._holds(path, device):
                return
            try:
                self.host.mounts.unmount(path)
            except DeviceBusy as exc:
                raise FailedPrecondition(
                    f"volume {volume_id}: {path} is busy (a process still uses it): {exc}"
                ) from exc
        raise Internal(f"volume {volume_id}: {path} is still mounted after 16 unmounts")

    # --- NodePublishVolume -------------------------------------------------------------

    def publish(
        self,
        volume_id: str,
        target_path: str,
        staging_path: str,
        cap: Capability | None,
        readonly: bool,
    ) -> None:
        """Bind the staged volume onto target_path (a directory for mount volumes, a
        file for block volumes), read-only when asked. Idempotent.

        Raises InvalidArgument, NotFound, FailedPrecondition (not staged),
        AlreadyExists (target holds something else), Aborted.
        """
        v.require(volume_id, "volume_id")
        target_path = v.check_absolute_path(target_path, "target_path")
        if cap is None:
            raise InvalidArgument(f"volume {volume_id}: volume_capability is required")
        check_capability(cap, self.config.filesystems)
        if not staging_path:
            # The spec's "Staging target path not set" (we have STAGE_UNSTAGE_VOLUME).
            raise FailedPrecondition(
                f"volume {volume_id}: staging_target_path is not set; this driver stages"
                " volumes, so call NodeStageVolume first and pass its path"
            )
        staging_path = v.check_absolute_path(staging_path, "staging_target_path")
        if target_path == staging_path or target_path.startswith(staging_path + "/") or \
                staging_path.startswith(target_path + "/"):
            raise InvalidArgument(
                f"volume {volume_id}: target_path {target_path} and staging_target_path"
                f" {staging_path} are the same or nested; a publish there would hide the"
                " staging mount or be taken down with it")
        self._check_outside_pool(target_path, "target_path")
        flags = v.check_mount_flags(cap.mount_flags)
        v.check_no_symlink(target_path, "target_path")
        readonly = readonly or cap.access_mode.read_only
        with self.locks.hold(volume_id, "NodePublishVolume"):
            self.controller.get_ready_volume(volume_id)
            record = self.catalog.get_staging(volume_id)
            if record is None or not record.staged or not record.at(staging_path):
                raise FailedPrecondition(
                    f"volume {volume_id} is not staged at {staging_path}; call NodeStageVolume"
                    " first"
                )
            if record.access_type is not cap.access_type:
                raise FailedPrecondition(
                    f"volume {volume_id} is staged for {record.access_type.value} access,"
                    f" not {cap.access_type.value}"
                )
            device = self._device_for(volume_id, record.device)
            if device is None:
                raise FailedPrecondition(
                    f"volume {volume_id} is staged but its loop device is gone (node"
                    " restarted?); stage it again"
                )
            devices = [device] if cap.access_type is AccessType.MOUNT else \
                self._devices_of(volume_id)
            if cap.access_type is AccessType.MOUNT:
                staged = self._mount_at(staging_path)
                if staged is None or not mount_is_of(staged, device.path):
                    raise FailedPrecondition(
                        f"volume {volume_id}: {staging_path} is not mounted; stage it again"
                    )
            current = self._mount_at(target_path)
            if current is not None:
                if mount_is_of_any(current, devices) and current.read_only == readonly:
                    return
                raise AlreadyExists(
                    f"target {target_path} already has {current.source}"
                    f" (readonly={current.read_only}) mounted; it is not volume {volume_id}"
                    f" with readonly={readonly}"
                )
            if cap.access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER:
                # The spec's second NodePublishVolume table: another target path is
                # FAILED_PRECONDITION for SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod).
                # The legacy SINGLE_NODE_WRITER/READER_ONLY stay allowed on several
                # targets: COs that predate SINGLE_NODE_MULTI_WRITER send them for
                # ReadWriteOnce, which lets several pods on one node share the volume.
                others = [m.mount_point for m in self.host.mounts.list_mounts()
                          if mount_is_of_any(m, devices)
                          and m.mount_point not in (staging_path, target_path)]
                if others:
                    raise FailedPrecondition(
                        f"volume {volume_id} is already published at {', '.join(others)};"
                        f" access mode {cap.access_mode.value} allows one target path"
                        " (SINGLE_NODE_MULTI_WRITER allows several); unpublish it there first"
                    )
            bind_flags = [f for f in flags if f in BIND_FLAGS and f != "ro"]
            if cap.access_type is AccessType.MOUNT:
                self._make_dir(target_path)
                source = staging_path
            else:
                self._make_file(target_path)
                source = device.path
                if readonly and not device.read_only:
                    # A read-only bind mount does not stop writes through a device node;
                    # only a read-only block device does. So a read-only publish of a
                    # volume staged read-write gets a read-only loop device of its own
                    # (direct I/O on both keeps them coherent).
                    source = self.host.loops.attach(
                        self.pool.image_path(volume_id), direct_io=self.config.direct_io,
                        read_only=True, block_size=device.logical_block_size,
                    ).path
            crash_point("publish.target_made")
            try:
                self.host.mounts.bind_mount(source, target_path, read_only=readonly,
                                            extra_flags=bind_flags)
                crash_point("publish.bound")
            except LinuxError:
                _remove_target(target_path)
                if source != device.path and source.startswith("/dev/"):
                    self.host.loops.detach(source)
                raise

    @staticmethod
    def _make_dir(path: str) -> None:
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise AlreadyExists(f"target {path} exists and is not a directory") from None
        except OSError as exc:
            raise _cannot_make(path, exc) from None

    @staticmethod
    def _make_file(path: str) -> None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o640)
            os.close(fd)
        except FileExistsError:
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                # Some COs create the target as a directory even for block volumes.
                try:
                    os.rmdir(path)
                except OSError as exc:
                    raise AlreadyExists(
                        f"target {path} is a non-empty directory; a block volume needs a file"
                    ) from exc
                NodeCore._make_file(path)
            elif not stat.S_ISREG(mode):
                raise AlreadyExists(f"target {path} exists and is not a regular file") from None
        except OSError as exc:
            raise _cannot_make(path, exc) from None

    # --- NodeUnpublishVolume -----------------------------------------------------------

    def unpublish(self, volume_id: str, target_path: str) -> None:
        """Unmount target_path and remove it. Idempotent.

        Raises InvalidArgument, NotFound (unknown volume), FailedPrecondition (busy).
        """
        v.require(volume_id, "volume_id")
        target_path = v.check_absolute_path(target_path, "target_path")
        # As for publish: a symlinked parent would make the rmdir below remove a
        # directory somewhere else.
        v.check_no_symlink(target_path, "target_path")
        with self.locks.hold(volume_id, "NodeUnpublishVolume"):
            record = self._staging_for_teardown(volume_id, "unpublish")
            entry = self._mount_at(target_path)
            if entry is not None:
                owner = next((d for d in self._devices_of(volume_id, record)
                              if mount_is_of(entry, d.path)), None)
                lost = self._detached_device(record)
                if owner is None and lost and mount_is_of(entry, lost):
                    # Its loop device was detached behind our back: the mount of the
                    # dead device node is still ours to take down.
                    try:
                        self.host.mounts.unmount(target_path)
                    except DeviceBusy as exc:
                        raise FailedPrecondition(
                            f"volume {volume_id}: {target_path} is busy (a process still uses"
                            f" it): {exc}"
                        ) from exc
                    _remove_target(target_path)
                    return
                if owner is None:
                    # Another volume's mount: this volume is not published here.
                    log.warning("volume %s: unpublish at %s, which holds another mount;"
                                " left alone", volume_id, target_path)
                    return
                self._unmount_ours(target_path, volume_id, owner)
                if owner.read_only and (record is None or owner.path != record.device):
                    # The read-only device made for this block publish goes with it.
                    self.host.loops.detach(owner.path)
                crash_point("unpublish.unmounted")
                if self._mount_at(target_path) is not None:
                    log.warning("volume %s: %s still holds another mount; left alone",
                                volume_id, target_path)
                    return
            _remove_target(target_path)

    # --- NodeExpandVolume --------------------------------------------------------------

    def expand(
        self,
        volume_id: str,
        volume_path: str,
        staging_path: str,
        capacity: CapacityRange | None = None,
        cap: Capability | None = None,
    ) -> int:
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
            volume = self.controller.get_ready_volume(volume_id)
            try:
                volume_path = v.check_absolute_path(volume_path, "volume_path")
            except InvalidArgument:
                raise NotFound(
                    f"volume {volume_id} is not published at {volume_path!r}") from None
            devices = self._devices_of(volume_id)
            entry = self._mount_at(volume_path)
            if not devices or entry is None or not mount_is_of_any(entry, devices):
                raise NotFound(f"volume {volume_id} is not staged or published at {volume_path}")
            record = self.catalog.get_staging(volume_id)
            if cap is not None:
                if record is not None and record.access_type is not cap.access_type:
                    raise InvalidArgument(
                        f"volume {volume_id} is staged for {record.access_type.value} access,"
                        f" not {cap.access_type.value}"
                    )
                check_volume_capability(volume, cap)
            if capacity is not None and self.config.expansion == "node" and \
                    capacity.required_bytes > volume.capacity_bytes and \
                    (not capacity.limit_bytes or capacity.limit_bytes >= volume.capacity_bytes):
                # --expansion node: the file grows here, on the volume's node (the
                # resizer, maybe elsewhere, only recorded the new size).
                mount = record is None or record.access_type is AccessType.MOUNT
                self.controller.grow_locked(volume, capacity, mount)
                volume = self.controller.get_ready_volume(volume_id)
            if capacity is not None:
                _check_node_capacity(volume, capacity)
            for device in devices:
                self.host.loops.refresh_capacity(device.path)
            crash_point("node_expand.refreshed")
            if record is None or record.access_type is AccessType.BLOCK or not record.fs_type:
                return volume.capacity_bytes
            staged = self._device_for(volume_id, record.device) or devices[0]
            mount_point = record.staging_path
            if not self.host.fs.needs_grow(staged.path, mount_point, record.fs_type):
                return volume.capacity_bytes
            if not self.host.fs.can_grow_online(record.fs_type):
                raise FailedPrecondition(
                    f"volume {volume_id}: growing a mounted {record.fs_type} filesystem needs"
                    " CAP_SYS_RESOURCE, which this driver process lacks; run the node plugin"
                    " privileged, or the filesystem is grown at the volume's next stage"
                )
            self.host.fs.grow(staged.path, mount_point, record.fs_type)
            crash_point("node_expand.grown")
            log.info("volume %s: %s grown online to fill %d bytes", volume_id, record.fs_type,
                     volume.capacity_bytes)
            return volume.capacity_bytes

    # --- NodeGetVolumeStats ------------------------------------------------------------

    def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        """Usage of the volume published (or staged) at volume_path. Read-only.

        Raises InvalidArgument, NotFound (unknown volume, or not at that path).
        """
        v.require(volume_id, "volume_id")
        v.require(volume_path, "volume_path")
        self.controller.get_ready_volume(volume_id)
        try:
            volume_path = v.check_absolute_path(volume_path, "volume_path")
        except InvalidArgument:
            # A path that cannot be ours is simply not where the volume is (the spec's
            # NOT_FOUND); it is never touched.
            raise NotFound(f"volume {volume_id} is not published at {volume_path!r}") from None
        # A broken volume (its backing file deleted, its device detached) is still
        # reported: its volume condition says what is wrong.
        paths = [d.path for d in self._devices_of(volume_id)]
        lost = self._detached_device(self.catalog.get_staging(volume_id))
        paths += [lost] if lost else []
        if not paths:
            raise NotFound(f"volume {volume_id} is not staged on this node")
        entry = self._mount_at(volume_path)
        if entry is None or not any(mount_is_of(entry, p) for p in paths):
            raise NotFound(f"volume {volume_id} is not mounted at {volume_path}")
        if stat.S_ISBLK(os.stat(volume_path).st_mode):
            size = self.host.fs.block_device_size(paths[0])
            return VolumeStats(total_bytes=size, available_bytes=0, used_bytes=0, is_block=True)
        fs = self.host.fs.statfs(volume_path)
        return VolumeStats(
            total_bytes=fs.total_bytes,
            available_bytes=fs.available_bytes,
            used_bytes=fs.used_bytes,
            total_inodes=fs.total_inodes,
            free_inodes=fs.free_inodes,
            used_inodes=fs.used_inodes,
        )


def _check_node_capacity(volume: Volume, rng: CapacityRange) -> None:
    """NodeExpandVolume only makes the node see the size ControllerExpandVolume gave the
    volume; a range that size does not satisfy is the spec's "Unsupported capacity_range"
    (OUT_OF_RANGE). Raises InvalidArgument for a malformed range."""
    check_range(rng, volume_subject(volume.id))
    req, lim, size = rng.required_bytes, rng.limit_bytes, volume.capacity_bytes
    if req > size:
        raise OutOfRange(
            f"volume {volume.id} has {size} bytes, less than the required {req};"
            " grow it with ControllerExpandVolume first"
        )
    if lim and lim < size:
        raise OutOfRange(
            f"volume {volume.id} has {size} bytes, more than the limit {lim}; volumes"
            " cannot shrink"
        )


def _remove_target(path: str) -> None:
    """Remove a target dir or file we created, never following a symlink. Idempotent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(
                f"target {path} is still a mount point (mounted again there, or in another"
                " mount namespace); unmount it and retry") from None
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            # E.g. EROFS or EACCES: its parent is not writable, which the CO must ensure.
            raise FailedPrecondition(
                f"cannot remove target {path}: {exc.strerror or exc}") from None


def _cannot_make(path: str, exc: OSError) -> FailedPrecondition:
    """The CO must give a target whose parent exists and is writable by the driver."""
    return FailedPrecondition(
        f"cannot create target {path}: {exc.strerror or exc}; its parent directory must"
        " exist and be writable (the CO creates it before NodePublishVolume)")


def _describe(staging: Staging) -> str:
    return (f"{staging.access_type.value}, fs={staging.fs_type or '-'},"
            f" flags={list(staging.mount_flags)}, readonly={staging.readonly}")


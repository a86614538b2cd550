"""Volumes' lifecycle on the controller side: create, delete, modify, look up and list.

Every mutation records its intent in the catalog (state CREATING or DELETING), acts on
the pool, then commits, so start-up reconciliation can finish or undo it. A create or
delete syncs the catalog once: its intent (see _create_locked and _delete_locked for
why the outcome needs no sync of its own). A public
method checks its request, takes the lock and calls a `_locked` method that does the
work (the caller of a `_locked` method holds the lock).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.capacity import Space, fit_growth, resolve_size
from csi_py.core.crashpoints import crash_point
from csi_py.core.errmap import pool_full
from csi_py.core.locks import KeyedTryLock
from csi_py.core.mutable import apply_mutable, check_mutable
from csi_py.core.paging import after_token, cut, page_limit
from csi_py.core.pool import Pool
from csi_py.core.rules import (
    capabilities_fit,
    check_capability,
    parse_parameters,
    requested_fs_type,
)
from csi_py.core.sources import ContentSource, Origin, Sources
from csi_py.core.topology import require_here
from csi_py.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import (
    AccessType,
    Capability,
    CapacityRange,
    Provisioning,
    Volume,
    VolumeState,
)
from csi_py.linux import Host, files
from csi_py.state.catalog import Catalog
from csi_py.state.errors import NameTaken
from csi_py.state.records import Records

log = logging.getLogger(__name__)

# The logical block size of new, empty volumes' loop devices: mkfs.ext4 is about twice
# as fast on it as on 512-byte sectors, and the filesystems made get 4 KiB blocks.
NEW_VOLUME_BLOCK_SIZE = 4096


@dataclass(frozen=True)
class VolumeListing:
    volumes: tuple[tuple[Volume, tuple[str, ...]], ...]  # (volume, published node ids)
    next_token: str


@dataclass(frozen=True)
class CreateRequest:
    """A CreateVolume request after its checks: what to build."""

    name: str
    size: int
    fs_type: str
    provisioning: Provisioning
    parameters: dict[str, str]
    mutable: dict[str, str]
    source: ContentSource | None
    origin: Origin | None


@dataclass(eq=False)
class Volumes:
    """Create, delete, modify, look up and list volumes, over the catalog and the pool."""

    config: Config
    catalog: Catalog
    pool: Pool
    host: Host
    locks: KeyedTryLock
    space: Space
    sources: Sources
    records: Records

    # --- CreateVolume ------------------------------------------------------------------

    def create_volume(
        self,
        name: str,
        capacity: CapacityRange,
        caps: list[Capability],
        parameters: dict[str, str],
        mutable_parameters: dict[str, str],
        requisite: list[dict[str, str]],
        source: ContentSource | None = None,
    ) -> Volume:
        """Create (or find, by name) a volume, empty or from a snapshot or a volume.
        Idempotent by name.

        Raises InvalidArgument, NotFound (the source), AlreadyExists (same name,
        incompatible request), OutOfRange, ResourceExhausted (pool full or topology
        elsewhere), Aborted.
        """
        v.check_name(name, "name")
        if not caps:
            raise InvalidArgument("volume_capabilities are required",
                                  subject=volume_subject(name=name))
        for cap in caps:
            check_capability(cap, self.config.filesystems)
        mutable = check_mutable(mutable_parameters, volume_subject(name=name))
        fs_type, provisioning = parse_parameters(self.config, parameters, caps)
        asked = requested_fs_type(parameters) or next((c.fs_type for c in caps if c.fs_type), "")
        wants_mount = any(c.access_type is AccessType.MOUNT for c in caps)
        if not wants_mount and not asked:
            # A raw block volume holds no filesystem of ours: record none, so listings
            # show it as block (the node formats nothing for a block staging anyway).
            fs_type = ""
        if source is not None:
            made = self.catalog.get_volume_by_name(name)
            if made is not None and made.content_source == source.label and \
                    made.state is VolumeState.READY:
                # The retry of a restore or clone that finished: answered from the
                # record, even if the source has been deleted since.
                return _existing_for_create(made, capacity, asked or made.fs_type,
                                            provisioning, parameters, source)
        origin = self.sources.resolve(name, source) if source else None
        if origin is not None and origin.fs_type and origin.fs_type != fs_type:
            if asked:
                raise InvalidArgument(f"its source {source} holds {origin.fs_type}, not {asked}",
                                      subject=volume_subject(name=name))
            fs_type = origin.fs_type
        size = resolve_size(self.config, capacity, fs_type, wants_mount,
                            at_least=origin.size_bytes if origin else 0)
        if origin is not None:
            size = fit_growth(fs_type, wants_mount, origin.size_bytes, size,
                              capacity.limit_bytes, volume_subject(name=name), str(source))
        require_here(volume_subject(name=name), requisite, self.config,
                     source.id if source is not None and source.kind == "snapshot" else "")
        request = CreateRequest(name, size, fs_type, provisioning, parameters, mutable,
                                source, origin)
        with self.locks.hold("name:" + name, "CreateVolume", volume_subject(name=name)):
            with self.space.failure_explained(volume_subject(name=name)):
                existing = self.catalog.get_volume_by_name(name)
                if existing is not None:
                    return _existing_for_create(existing, capacity, fs_type, provisioning,
                                                parameters, source)
                return self._create_locked(request)

    def _create_locked(self, req: CreateRequest) -> Volume:
        """Record, build and commit a new volume; the caller holds its name's lock and
        found no volume of that name. Undoes everything when a step fails."""
        self.space.check_fits(req.name, req.size, req.provisioning)
        origin = req.origin
        volume = Volume(
            id=v.new_volume_id(),
            name=req.name,
            capacity_bytes=req.size,
            fs_type=req.fs_type,
            provisioning=req.provisioning,
            parameters=tuple(sorted(req.parameters.items())),
            state=VolumeState.CREATING,
            created_at=time.time(),
            content_source=req.source.label if req.source else "",
            mutable_parameters=tuple(sorted(req.mutable.items())),
            block_size=origin.block_size if origin else NEW_VOLUME_BLOCK_SIZE,
        )
        try:
            # Durable: the intent is on disk before the image exists, so no crash or
            # power loss leaves an image that start-up cannot account for.
            volume = self.catalog.insert_volume(volume)
        except NameTaken:  # only if someone wrote the catalog behind our back
            raise AlreadyExists("already recorded",
                                subject=volume_subject(name=req.name)) from None
        path = self.pool.image_path(volume.id)
        thick = req.provisioning is Provisioning.THICK
        step = "create" if origin is None else "restore"
        crash_point(f"{step}.recorded")
        try:
            if origin is None:
                files.create_image(path, req.size, preallocate=thick)
            else:
                self.sources.fill(origin, path, thick)
                files.grow_image(path, req.size, preallocate=thick)
            # The image describes itself before the catalog commits it, so a
            # lost catalog can be rebuilt (core/rebuild.py).
            self.records.put_volume(volume, self.sources.format_of(origin))
            crash_point("create.image_written" if origin is None else "restore.filled")
        except BaseException as exc:
            files.remove_file(path)
            self.records.remove(volume.id)
            # Unsynced: lost, it leaves CREATING without a record, rolled back again.
            self.catalog.delete_volume(volume.id, durable=False)
            if pool_full(exc):
                raise ResourceExhausted(
                    f"the pool {self.pool.root} has no room for"
                    f" {req.size} bytes ({req.provisioning.value})",
                    subject=volume_subject(name=req.name),
                ) from exc
            raise
        # The record, synced after the complete image, is the create's commit point:
        # start-up finishes a CREATING volume whose record and image are there and
        # rolls back one without (core/reconcile.py). So READY needs no sync of its own
        # (one durable commit per create): lost in a power loss, it is set again.
        self.catalog.set_volume_state(volume.id, VolumeState.READY, durable=False)
        crash_point(f"{step}.committed")
        log.info("created volume %s name=%s size=%d fs=%s %s", volume.id, req.name, req.size,
                 req.fs_type, req.provisioning.value)
        return replace(volume, state=VolumeState.READY)

    # --- DeleteVolume ------------------------------------------------------------------

    def delete_volume(self, volume_id: str) -> None:
        """Delete a volume and its backing file. Idempotent: an unknown id is success.

        Raises InvalidArgument (empty id), FailedPrecondition (still attached or staged),
        Aborted, Unavailable (the pool has failed).
        """
        v.require(volume_id, "volume_id")
        if not v.is_volume_id(volume_id):
            return
        with self.locks.hold(volume_id, "DeleteVolume"), \
                self.space.failure_explained(volume_subject(volume_id)):
            self._delete_locked(volume_id)

    def _delete_locked(self, volume_id: str) -> None:
        # On a failed pool the first catalog read or the DELETING commit (synced) fails
        # before anything is removed; failure_explained then says why.
        volume = self.catalog.get_volume(volume_id)
        if volume is None:
            return
        path = self.pool.image_path(volume_id)
        attached = self.catalog.attachments_of(volume_id)
        if attached:
            nodes = ", ".join(a.node_id for a in attached)
            raise FailedPrecondition(
                f"still published to node(s) {nodes}; call ControllerUnpublishVolume first",
                subject=volume_subject(volume_id),
            )
        self._require_unused(volume_id, path)
        # One durable commit: DELETING, synced, is the intent start-up finishes after
        # any crash or power loss. The removals are synced (their directories) before
        # the rows go, so no image or record can come back after a power loss once the
        # rows are gone (a record without a row would be rebuilt into a volume); the
        # rows' removal itself needs no sync: lost, it leaves DELETING, finished again.
        self.catalog.set_volume_state(volume_id, VolumeState.DELETING)
        crash_point("delete.marked")
        files.remove_file(path)
        crash_point("delete.file_removed")
        self.records.remove(volume_id)
        self.catalog.delete_volume(volume_id, durable=False)
        self.pool.keep_catalog_reserve()
        log.info("deleted volume %s name=%s", volume_id, volume.name)

    def _require_unused(self, volume_id: str, path: str) -> None:
        """Raise FailedPrecondition when the image `path` is staged here or held open.

        A stage records its intent before it attaches and an unstage forgets it only
        after the detach, so the staging record catches every device of ours, also one
        whose attach was not committed when the process died (staging rows are not
        synced, but no loop device outlives a power loss, and start-up adopts a device
        on a known image that has no row). The kernel answers for everyone else's
        (attached by hand, through another path or a hard link, or left by a lost
        catalog): held_open asks the image file itself (a lease), so the node's loop
        devices are read only when something does hold it (to name it) or the pool's
        filesystem cannot tell (then the scan alone decides, as it always did)."""
        if self.catalog.get_staging(volume_id) is not None:
            where = "a staging record"
        else:
            held = self.host.loops.held_open(path)
            devices = [] if held is False else self.host.loops.find_by_backing_file(path)
            if devices:
                where = ", ".join(d.path for d in devices)
            elif held:
                where = "its image is held open by a loop device attached through" \
                        " another path, or by a process"
            else:
                return
        raise FailedPrecondition(f"in use on this node ({where}); unstage it before deleting",
                                 subject=volume_subject(volume_id))

    # --- ControllerModifyVolume ----------------------------------------------------------

    def modify(self, volume_id: str, mutable_parameters: dict[str, str]) -> None:
        """Change a volume's mutable parameters; a loop device attached here changes at
        once. Idempotent. Raises InvalidArgument, NotFound, Aborted."""
        v.require(volume_id, "volume_id")
        with self.locks.hold(volume_id, "ControllerModifyVolume"):
            volume = self.get_ready_volume(volume_id)
            values = check_mutable(mutable_parameters, volume_subject(volume_id))
            merged = {**volume.mutable_parameter_map, **values}
            for device in self.host.loops.attached_to(self.pool.image_path(volume_id)):
                apply_mutable(self.host, device.path, values)
            self.catalog.set_mutable_parameters(volume_id, merged)
            self.records.put_volume(replace(volume, mutable_parameters=tuple(sorted(
                merged.items()))), self.records.format_state(volume_id))

    # --- lookups -----------------------------------------------------------------------

    def get_ready_volume(self, volume_id: str) -> Volume:
        """The READY volume with this id. Read-only. Raises InvalidArgument (empty),
        NotFound."""
        v.require(volume_id, "volume_id")
        volume = self.catalog.get_volume(volume_id) if v.is_volume_id(volume_id) else None
        if volume is None or volume.state is VolumeState.DELETING:
            raise NotFound("does not exist", subject=volume_subject(volume_id))
        if volume.state is VolumeState.CREATING:
            raise NotFound("still being created", subject=volume_subject(volume_id))
        return volume

    def validate_capabilities(
        self, volume_id: str, caps: list[Capability], parameters: dict[str, str],
        mutable_parameters: dict[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Whether `caps` (and `parameters`) suit the volume: (confirmed, reason).
        Read-only.

        Raises InvalidArgument (missing fields), NotFound.
        """
        v.require(volume_id, "volume_id")
        if not caps:
            raise InvalidArgument("volume_capabilities are required",
                                  subject=volume_subject(volume_id))
        volume = self.get_ready_volume(volume_id)
        return capabilities_fit(volume, caps, parameters, mutable_parameters,
                                self.config.filesystems)

    def list_volumes(self, max_entries: int, starting_token: str) -> VolumeListing:
        """A page of volumes in creation order (core/paging.py). Read-only. Raises
        InvalidArgument (negative max_entries), Aborted (a token this catalog never
        issued)."""
        limit = page_limit(max_entries)
        after = after_token(starting_token, self.catalog.highest_seq_issued)
        page, next_token = cut(self.catalog.list_volumes(after, limit + 1), limit)
        attachments = self.catalog.attachments_of_many([vol.id for vol in page])
        entries = tuple(
            (vol, tuple(a.node_id for a in attachments.get(vol.id, [])))
            for vol in page
            if vol.state is VolumeState.READY
        )
        return VolumeListing(entries, next_token)


def _existing_for_create(
    existing: Volume,
    capacity: CapacityRange,
    fs_type: str,
    provisioning: Provisioning,
    parameters: dict[str, str],
    source: ContentSource | None,
) -> Volume:
    """CreateVolume's idempotency: the existing volume of the name, when it is what the
    request asks for. Pure; raises FailedPrecondition (not ready yet), AlreadyExists
    (naming every difference)."""
    name = existing.name
    if existing.state is not VolumeState.READY:
        raise FailedPrecondition(f"it is {existing.state.value}; retry later",
                                 subject=volume_subject(existing.id, name))
    problems = []
    if capacity.required_bytes and existing.capacity_bytes < capacity.required_bytes:
        problems.append(f"it has {existing.capacity_bytes} bytes,"
                        f" less than the required {capacity.required_bytes}")
    if capacity.limit_bytes and existing.capacity_bytes > capacity.limit_bytes:
        problems.append(f"it has {existing.capacity_bytes} bytes,"
                        f" more than the limit {capacity.limit_bytes}")
    if existing.fs_type != fs_type:
        problems.append(f"its filesystem is {existing.fs_type}, not {fs_type}")
    if existing.provisioning is not provisioning:
        problems.append(f"it is {existing.provisioning.value}, not {provisioning.value}")
    if existing.parameter_map != parameters:
        problems.append("it was created with other parameters")
    wanted_source = source.label if source else ""
    if existing.content_source != wanted_source:
        problems.append(f"it was made from {existing.content_source or 'nothing'},"
                        f" not {wanted_source or 'nothing'}")
    if problems:
        raise AlreadyExists("exists but " + "; ".join(problems),
                            subject=volume_subject(existing.id, name))
    return existing

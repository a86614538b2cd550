"""Controller logic: volumes' creation, deletion, validation, listing, capacity and
attachment to nodes. Everything here is idempotent as the CSI spec requires."""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import dataclass, replace

from csi_py.config import MIN_FS_BYTES, Config
from csi_py.core import validation as v
from csi_py.core.capture import Capturer
from csi_py.core.crashpoints import crash_point
from csi_py.core.locks import KeyedTryLock
from csi_py.core.mutable import apply_mutable, check_mutable
from csi_py.core.pool import Pool
from csi_py.core.poolstate import PoolCondition, PoolState, pool_state
from csi_py.core.topology import (
    require_here,
    restore_there,
    snapshot_owner_elsewhere,
    topology_matches,
)
from csi_py.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from csi_py.domain.model import (
    AccessType,
    Attachment,
    Capability,
    CapacityRange,
    Provisioning,
    Volume,
    VolumeState,
)
from csi_py.domain.snapshot_ids import is_snapshot_id
from csi_py.linux import Host, files
from csi_py.linux.filesystems import for_type
from csi_py.state.catalog import Catalog, CatalogError, NameTaken
from csi_py.state.records import Records, SnapshotRecord, VolumeRecord

log = logging.getLogger(__name__)

PARAM_FS_TYPE = "fsType"
# The StorageClass key Kubernetes documents. external-provisioner strips it and puts its
# value in the capability's fs_type; a CO that passes it through is understood too.
PARAM_PREFIXED_FS_TYPE = "csi.storage.k8s.io/fstype"
PARAM_PROVISIONING = "provisioning"
KNOWN_PARAMETERS = (PARAM_FS_TYPE, PARAM_PROVISIONING)
# Keys the external-provisioner adds (with --extra-create-metadata); they describe the
# PVC and never change what we build.
IGNORED_PARAMETER_PREFIXES = ("csi.storage.k8s.io/",)
PUBLISH_CONTEXT_NODE = "node"
PUBLISH_CONTEXT_READONLY = "readonly"
MAX_PAGE = 1000
TOKEN = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class ContentSource:
    """Where a new volume's data comes from: ("snapshot", id) or ("volume", id)."""

    kind: str
    id: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.id}"

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass(frozen=True)
class Origin:
    """A resolved content source: the file to copy and what it holds."""

    source: ContentSource
    image: str
    size_bytes: int
    fs_type: str
    # The block size a volume made from it gets: the source volume's when known, else
    # 512, which every filesystem it may hold mounts on.
    block_size: int = 512


# The logical block size of new, empty volumes' loop devices: mkfs.ext4 is about twice
# as fast on it as on 512-byte sectors, and the filesystems made get 4 KiB blocks.
NEW_VOLUME_BLOCK_SIZE = 4096


@dataclass(frozen=True)
class VolumeListing:
    volumes: tuple[tuple[Volume, tuple[str, ...]], ...]  # (volume, published node ids)
    next_token: str


@dataclass(frozen=True)
class CapacityReport:
    available_bytes: int
    maximum_volume_bytes: int
    minimum_volume_bytes: int


def check_capability(cap: Capability, filesystems: tuple[str, ...]) -> None:
    """Raise InvalidArgument when we can never honour `cap`."""
    if not cap.access_mode.supported:
        raise InvalidArgument(
            f"access mode {cap.access_mode.value} is not supported: a loop device lives on"
            " one node, so only SINGLE_NODE_* modes are offered"
        )
    if cap.access_type is AccessType.MOUNT and cap.fs_type and cap.fs_type not in filesystems:
        raise InvalidArgument(
            f"filesystem type {cap.fs_type!r} is not supported; choose one of {filesystems}"
        )
    if cap.access_type is AccessType.BLOCK and cap.mount_flags:
        raise InvalidArgument("mount flags make no sense for a block volume")
    v.check_mount_flags(cap.mount_flags)


def check_volume_capability(volume: Volume, cap: Capability) -> None:
    """The spec's "Exceeds capabilities" for an existing volume: a capability naming
    another filesystem than the volume holds. Raises InvalidArgument."""
    if cap.access_type is AccessType.MOUNT and cap.fs_type and volume.fs_type and \
            cap.fs_type != volume.fs_type:
        raise InvalidArgument(
            f"volume {volume.id} holds {volume.fs_type}, not {cap.fs_type}; the capability"
            " does not fit it"
        )


def requested_fs_type(parameters: dict[str, str]) -> str:
    """The filesystem a CreateVolume's parameters name ("" for none). Pure."""
    return parameters.get(PARAM_FS_TYPE) or parameters.get(PARAM_PREFIXED_FS_TYPE, "")


def fit_growth(fs_type: str, mount: bool, old: int, size: int, limit: int, subject: str) -> int:
    """`size` for a filesystem of `old` bytes that must grow to fill it, raised to what
    the filesystem can grow to (its min_grow_bytes; btrfs: 256 MiB) when the limit
    allows. Raises OutOfRange when it does not."""
    fs = for_type(fs_type) if mount else None
    least = fs.min_grow_bytes if fs else 0
    if not least or size <= old or size >= least:
        return size
    if limit and limit < least:
        raise OutOfRange(
            f"{subject}: a {fs_type} filesystem can only be grown to {least}"
            f" bytes or more (the kernel refuses smaller resizes); limit_bytes is {limit}"
        )
    return least


class ControllerCore:
    """The CSI controller service's logic, over a catalog, a pool and a host."""

    def __init__(
        self, config: Config, catalog: Catalog, pool: Pool, host: Host, locks: KeyedTryLock
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.host = host
        self.locks = locks
        self.capturer = Capturer(catalog, pool, host)
        self.records = Records(pool.records_dir)

    # --- sizes and parameters ----------------------------------------------------------

    def _parse_parameters(
        self, parameters: dict[str, str], caps: list[Capability]
    ) -> tuple[str, Provisioning]:
        v.check_map(parameters, "parameters")
        unknown = sorted(
            k for k in parameters
            if k not in KNOWN_PARAMETERS and not k.startswith(IGNORED_PARAMETER_PREFIXES)
        )
        if unknown:
            raise InvalidArgument(
                f"unknown parameter(s) {unknown}; this driver accepts {list(KNOWN_PARAMETERS)}"
            )
        cap_fs = {c.fs_type for c in caps if c.access_type is AccessType.MOUNT and c.fs_type}
        if len(cap_fs) > 1:
            raise InvalidArgument(f"volume capabilities ask for several filesystems: {cap_fs}")
        fs_type = requested_fs_type(parameters)
        if fs_type and fs_type not in self.config.filesystems:
            raise InvalidArgument(
                f"parameter {PARAM_FS_TYPE}={fs_type!r} is not supported; choose one of"
                f" {self.config.filesystems}"
            )
        if fs_type and cap_fs and cap_fs != {fs_type}:
            raise InvalidArgument(
                f"parameter {PARAM_FS_TYPE}={fs_type!r} contradicts the capability's"
                f" fs_type {cap_fs.pop()!r}"
            )
        fs_type = fs_type or (cap_fs.pop() if cap_fs else self.config.default_fs_type)
        prov = parameters.get(PARAM_PROVISIONING, self.config.default_provisioning)
        try:
            provisioning = Provisioning(prov)
        except ValueError:
            raise InvalidArgument(
                f"parameter {PARAM_PROVISIONING}={prov!r} must be 'thin' or 'thick'"
            ) from None
        return fs_type, provisioning

    def resolve_size(
        self, rng: CapacityRange, fs_type: str, mount: bool, at_least: int = 0
    ) -> int:
        """The size to create for `rng`: the default when unset, at least the filesystem's
        minimum, rounded up to the granularity, and within the limit.

        Raises InvalidArgument for negative or inverted ranges, OutOfRange when no size
        that satisfies the range can be made.
        """
        req, lim = rng.required_bytes, rng.limit_bytes
        if req < 0 or lim < 0:
            raise InvalidArgument("capacity_range bytes must not be negative")
        if lim and req > lim:
            raise InvalidArgument(f"required_bytes {req} is larger than limit_bytes {lim}")
        gran = self.config.size_granularity_bytes
        floor = max(MIN_FS_BYTES.get(fs_type, gran) if mount else gran, at_least)
        if lim and at_least > lim:
            raise OutOfRange(
                f"limit_bytes {lim} is smaller than the source's {at_least} bytes; a volume"
                " made from a snapshot or a volume is at least as large as its source"
            )
        # Without a request, a copy of a snapshot or volume gets its source's size.
        want = req or at_least or (min(self.config.default_size_bytes, lim) if lim else
                                   self.config.default_size_bytes)
        size = -(-max(want, floor) // gran) * gran
        if lim and size > lim:
            # Rounding up broke the limit; a smaller multiple may still fit.
            size = lim // gran * gran
            if size < max(req, floor):
                raise OutOfRange(
                    f"no size between {req} and {lim} bytes is possible: sizes are multiples"
                    f" of {gran} bytes and {fs_type if mount else 'a volume'} needs at least"
                    f" {floor} bytes"
                )
        if size > self.config.max_volume_bytes:
            raise OutOfRange(
                f"{size} bytes is more than the largest volume ({self.config.max_volume_bytes})"
            )
        return size

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
            raise InvalidArgument(f"volume {name!r}: volume_capabilities are required")
        for cap in caps:
            check_capability(cap, self.config.filesystems)
        mutable = check_mutable(mutable_parameters, f"volume {name!r}")
        fs_type, provisioning = self._parse_parameters(parameters, caps)
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
                return self._existing_for_create(made, capacity, asked or made.fs_type,
                                                 provisioning, parameters, source)
        origin = self._resolve_source(name, source) if source else None
        if origin is not None and origin.fs_type and origin.fs_type != fs_type:
            if asked:
                raise InvalidArgument(
                    f"volume {name!r}: its source {source} holds {origin.fs_type}, not {asked}"
                )
            fs_type = origin.fs_type
        size = self.resolve_size(capacity, fs_type, wants_mount,
                                 at_least=origin.size_bytes if origin else 0)
        if origin is not None:
            size = fit_growth(fs_type, wants_mount, origin.size_bytes, size,
                              capacity.limit_bytes, f"volume {name!r} (from {source})")
        require_here(f"volume {name!r}", requisite, self.config,
                     source.id if source is not None and source.kind == "snapshot" else "")
        with self.locks.hold("name:" + name, "CreateVolume"):
            existing = self._volume_named(name)
            if existing is not None:
                return self._existing_for_create(existing, capacity, fs_type, provisioning,
                                                 parameters, source)
            self._check_space(name, size, provisioning)
            volume = Volume(
                id=v.new_volume_id(),
                name=name,
                capacity_bytes=size,
                fs_type=fs_type,
                provisioning=provisioning,
                parameters=tuple(sorted(parameters.items())),
                state=VolumeState.CREATING,
                created_at=time.time(),
                content_source=source.label if source else "",
                mutable_parameters=tuple(sorted(mutable.items())),
                block_size=origin.block_size if origin else NEW_VOLUME_BLOCK_SIZE,
            )
            try:
                volume = self.catalog.insert_volume(volume)
            except NameTaken:  # only if someone wrote the catalog behind our back
                raise AlreadyExists(f"volume name {name!r} is already recorded") from None
            path = self.pool.image_path(volume.id)
            thick = provisioning is Provisioning.THICK
            step = "create" if origin is None else "restore"
            crash_point(f"{step}.recorded")
            try:
                if origin is None:
                    files.create_image(path, size, preallocate=thick)
                else:
                    self._fill_from(origin, path, thick)
                    files.grow_image(path, size, preallocate=thick)
                # The image describes itself before the catalog commits it, so a
                # lost catalog can be rebuilt (core/rebuild.py).
                self.records.put_volume(volume, self._format_of(origin))
                crash_point("create.image_written" if origin is None else "restore.filled")
            except BaseException as exc:
                files.remove_file(path)
                self.records.remove(volume.id)
                self.catalog.delete_volume(volume.id)
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(
                        f"volume {name!r}: the pool {self.pool.root} has no room for"
                        f" {size} bytes ({provisioning.value})"
                    ) from exc
                raise
            self.catalog.set_volume_state(volume.id, VolumeState.READY)
            crash_point(f"{step}.committed")
            log.info("created volume %s name=%s size=%d fs=%s %s", volume.id, name, size,
                     fs_type, provisioning.value)
            return replace(volume, state=VolumeState.READY)

    def _existing_for_create(
        self,
        existing: Volume,
        capacity: CapacityRange,
        fs_type: str,
        provisioning: Provisioning,
        parameters: dict[str, str],
        source: ContentSource | None,
    ) -> Volume:
        name = existing.name
        if existing.state is not VolumeState.READY:
            raise FailedPrecondition(
                f"volume {name!r} ({existing.id}) is {existing.state.value}; retry later"
            )
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
            raise AlreadyExists(
                f"volume {name!r} exists ({existing.id}) but " + "; ".join(problems)
            )
        return existing

    def _resolve_source(self, name: str, source: ContentSource) -> Origin:
        """The snapshot or volume a new volume is made from. Raises InvalidArgument,
        NotFound, ResourceExhausted (a snapshot whose id names another node)."""
        if source.kind == "snapshot":
            snap = self.catalog.get_snapshot(source.id) if is_snapshot_id(source.id) else None
            if snap is None or not snap.ready:
                # Looked up here first: a snapshot this pool holds is usable whatever node
                # its id names (a node renamed on the same pool keeps its snapshots).
                elsewhere = snapshot_owner_elsewhere(source.id, self.config)
                if elsewhere is not None:
                    # The spec's "Unable to provision in accessible_topology": the source
                    # exists, but a volume made from it can only be on its node. With
                    # WaitForFirstConsumer, external-provisioner answers this code by
                    # sending the PVC back to the scheduler instead of retrying here.
                    raise ResourceExhausted(
                        f"volume {name!r}: " + restore_there(elsewhere, source.id, self.config))
                raise NotFound(f"volume {name!r}: source snapshot {source.id!r} does not exist"
                               f" on node {self.config.node_id!r} (snapshots stay on their node)")
            parent = self.catalog.get_volume(snap.source_volume_id) \
                if v.is_volume_id(snap.source_volume_id) else None
            return Origin(source, self.pool.snapshot_path(snap.id), snap.size_bytes,
                          snap.fs_type, parent.block_size if parent else 512)
        if source.kind == "volume":
            vol = self.catalog.get_volume(source.id) if v.is_volume_id(source.id) else None
            if vol is None or vol.state is not VolumeState.READY:
                raise NotFound(f"volume {name!r}: source volume {source.id!r} does not exist")
            return Origin(source, self.pool.image_path(vol.id), vol.capacity_bytes,
                          vol.fs_type, vol.block_size)
        raise InvalidArgument(f"volume {name!r}: unknown content source kind {source.kind!r}")

    def _format_of(self, origin: Origin | None) -> str:
        """A copy holds what its source held: its format state comes along."""
        if origin is None:
            return ""
        rec = self.records.get(origin.source.id)
        return rec.format if isinstance(rec, (VolumeRecord, SnapshotRecord)) else ""

    def _fill_from(self, origin: Origin, path: str, thick: bool) -> None:
        """Copy the source's data into a new image at `path`: a reflink where possible,
        except for a thick volume, whose blocks must be its own (never copy-on-write)."""
        if origin.source.kind == "volume":
            with self.locks.hold(origin.source.id, "CreateVolume (clone source)"):
                self.capturer.capture([(origin.image, path)], [origin.source.id],
                                      allow_reflink=not thick)
        else:
            files.clone_file(origin.image, path, allow_reflink=not thick)

    def _volume_named(self, name: str) -> Volume | None:
        """The catalog's volume of this name. Raises Unavailable naming the pool's
        failure when the catalog cannot be read because the pool's filesystem failed
        (a thread's fresh catalog connection cannot read a shut-down filesystem), else
        CatalogError."""
        try:
            return self.catalog.get_volume_by_name(name)
        except CatalogError as exc:
            state = self._pool_state()
            if state.failed:
                raise Unavailable(f"volume {name!r}: {state.message}") from exc
            raise

    def _require_working_pool(self, what: str) -> PoolState:
        """The pool's state; raises Unavailable (the CO retries) while its filesystem
        has failed: nothing can be created in it, deleted from it or recorded in its
        catalog."""
        state = self._pool_state()
        if state.failed:
            raise Unavailable(f"{what}: {state.message}")
        return state

    def _pool_state(self) -> PoolState:
        # The catalog's reserve comes back as soon as there is room for it, before
        # the free space is measured for a new volume.
        self.pool.keep_catalog_reserve()
        return pool_state(self.pool, self.config.reserve_bytes)

    def _check_space(self, name: str, size: int, provisioning: Provisioning) -> None:
        report = self.capacity(provisioning, self._require_working_pool(f"volume {name!r}"))
        if size > report.available_bytes:
            raise ResourceExhausted(
                f"volume {name!r}: {size} bytes ({provisioning.value}) do not fit; the pool"
                f" {self.pool.root} can offer {report.available_bytes} bytes"
            )

    # --- DeleteVolume ------------------------------------------------------------------

    def delete_volume(self, volume_id: str) -> None:
        """Delete a volume and its backing file. Idempotent: an unknown id is success.

        Raises InvalidArgument (empty id), FailedPrecondition (still attached or staged),
        Aborted.
        """
        v.require(volume_id, "volume_id")
        if not v.is_volume_id(volume_id):
            return
        with self.locks.hold(volume_id, "DeleteVolume"):
            self._require_working_pool(f"volume {volume_id}")
            volume = self.catalog.get_volume(volume_id)
            if volume is None:
                return
            path = self.pool.image_path(volume_id)
            attached = self.catalog.attachments_of(volume_id)
            if attached:
                nodes = ", ".join(a.node_id for a in attached)
                raise FailedPrecondition(
                    f"volume {volume_id} is still published to node(s) {nodes};"
                    " call ControllerUnpublishVolume first"
                )
            devices = self.host.loops.find_by_backing_file(path)
            if devices or self.catalog.get_staging(volume_id):
                where = ", ".join(d.path for d in devices) or "a staging record"
                raise FailedPrecondition(
                    f"volume {volume_id} is in use on this node ({where});"
                    " unstage it before deleting"
                )
            self.catalog.set_volume_state(volume_id, VolumeState.DELETING)
            crash_point("delete.marked")
            files.remove_file(path)
            crash_point("delete.file_removed")
            self.records.remove(volume_id)
            self.catalog.delete_volume(volume_id)
            self.pool.keep_catalog_reserve()
            log.info("deleted volume %s name=%s", volume_id, volume.name)

    # --- lookups -----------------------------------------------------------------------

    def get_ready_volume(self, volume_id: str) -> Volume:
        """The READY volume with this id. Raises InvalidArgument (empty), NotFound."""
        v.require(volume_id, "volume_id")
        volume = self.catalog.get_volume(volume_id) if v.is_volume_id(volume_id) else None
        if volume is None or volume.state is VolumeState.DELETING:
            raise NotFound(f"volume {volume_id!r} does not exist")
        if volume.state is VolumeState.CREATING:
            raise NotFound(f"volume {volume_id!r} is still being created")
        return volume

    def validate_capabilities(
        self, volume_id: str, caps: list[Capability], parameters: dict[str, str],
        mutable_parameters: dict[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Whether `caps` (and `parameters`) suit the volume: (confirmed, reason).

        Raises InvalidArgument (missing fields), NotFound.
        """
        v.require(volume_id, "volume_id")
        if not caps:
            raise InvalidArgument(f"volume {volume_id}: volume_capabilities are required")
        volume = self.get_ready_volume(volume_id)
        for cap in caps:
            try:
                check_capability(cap, self.config.filesystems)
            except InvalidArgument as exc:
                return False, str(exc)
            if cap.access_type is AccessType.MOUNT and volume.fs_type and \
                    cap.fs_type not in ("", volume.fs_type):
                return False, (f"volume {volume_id} holds {volume.fs_type}, not {cap.fs_type}")
        if parameters and parameters != volume.parameter_map:
            return False, f"volume {volume_id} was created with other parameters"
        if mutable_parameters:
            return False, (f"volume {volume_id}: mutable_parameters {sorted(mutable_parameters)}"
                           " are not supported by this driver")
        return True, ""

    def list_volumes(self, max_entries: int, starting_token: str) -> VolumeListing:
        """A page of volumes in creation order.

        The token is the seq of the last volume returned, so deletions between pages
        never make entries repeat or vanish. Raises InvalidArgument (negative
        max_entries), Aborted (a token this catalog never issued).
        """
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        after = 0
        if starting_token:
            # Only the exact form we issue (a positive decimal seq we handed out).
            if not TOKEN.fullmatch(starting_token) or int(starting_token) > \
                    self.catalog.highest_seq_issued():
                raise Aborted(f"starting_token {starting_token!r} is not one this driver issued;"
                              " list again from the start")
            after = int(starting_token)
        limit = min(max_entries or MAX_PAGE, MAX_PAGE)
        page = self.catalog.list_volumes(after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        attachments = self.catalog.attachments_of_many([vol.id for vol in page])
        entries = tuple(
            (vol, tuple(a.node_id for a in attachments.get(vol.id, [])))
            for vol in page
            if vol.state is VolumeState.READY
        )
        return VolumeListing(entries, str(page[-1].seq) if more and page else "")

    def capacity(self, provisioning: Provisioning, state: PoolState | None = None
                 ) -> CapacityReport:
        """What a new volume of this provisioning can have, from the pool's real space.

        Thick volumes take real blocks now, so they get the free space. Thin volumes only
        promise: their total may reach thin_overcommit times the pool's size.
        """
        state = state or self._pool_state()
        total, _ = files.space(self.pool.volumes_dir) if not state.failed else (0, 0)
        usable_free = max(0, state.free_bytes - self.config.reserve_bytes)
        if state.condition is not PoolCondition.OK:
            # A failed pool offers nothing; a full one cannot even hold what thin
            # volumes already promised, so it promises no more.
            available = 0
        elif provisioning is Provisioning.THICK:
            available = usable_free
        else:
            promise_limit = int((total - self.config.reserve_bytes) * self.config.thin_overcommit)
            available = max(0, promise_limit - self.catalog.provisioned_bytes())
        gran = self.config.size_granularity_bytes
        available = available // gran * gran
        return CapacityReport(
            available_bytes=available,
            maximum_volume_bytes=min(available, self.config.max_volume_bytes),
            minimum_volume_bytes=gran,
        )

    def get_capacity(
        self, caps: list[Capability], parameters: dict[str, str], topology: dict[str, str] | None
    ) -> CapacityReport:
        """GetCapacity: 0 when the capabilities or topology cannot be served here."""
        if topology is not None and not topology_matches(
            topology, self.config.topology_key, self.config.node_id
        ):
            return CapacityReport(0, 0, 0)
        try:
            for cap in caps:
                check_capability(cap, self.config.filesystems)
            _, provisioning = self._parse_parameters(parameters, caps)
        except InvalidArgument:
            return CapacityReport(0, 0, 0)
        return self.capacity(provisioning)

    # --- ControllerExpandVolume ------------------------------------------------------

    def expand(
        self, volume_id: str, capacity: CapacityRange, cap: Capability | None
    ) -> tuple[int, bool]:
        """Grow a volume's backing file (and its loop device, if attached here) to the
        requested size. Returns (new capacity, whether the node must grow the
        filesystem). Idempotent: a volume already that large is left alone.

        Raises InvalidArgument, NotFound, OutOfRange (shrinking, or over the limit),
        ResourceExhausted (no room for a thick volume), Aborted.
        """
        v.require(volume_id, "volume_id")
        req, lim = capacity.required_bytes, capacity.limit_bytes
        if req < 0 or lim < 0:
            raise InvalidArgument(f"volume {volume_id}: capacity_range bytes must not be negative")
        if req == 0 and lim == 0:
            raise InvalidArgument(f"volume {volume_id}: capacity_range is required")
        if lim and req > lim:
            raise InvalidArgument(
                f"volume {volume_id}: required_bytes {req} is larger than limit_bytes {lim}")
        if cap is not None:
            check_capability(cap, self.config.filesystems)
        with self.locks.hold(volume_id, "ControllerExpandVolume"):
            volume = self.get_ready_volume(volume_id)
            if cap is not None:
                check_volume_capability(volume, cap)
            if capacity.limit_bytes and capacity.limit_bytes < volume.capacity_bytes:
                raise OutOfRange(
                    f"volume {volume_id} has {volume.capacity_bytes} bytes; shrinking it to"
                    f" at most {capacity.limit_bytes} is not supported"
                )
            # A filesystem must be grown by the node (NodeExpandVolume, or the next
            # NodeStageVolume, which grows a filesystem smaller than its device).
            needs_node = cap is None or cap.access_type is AccessType.MOUNT
            if capacity.required_bytes <= volume.capacity_bytes:
                return volume.capacity_bytes, needs_node
            return self.grow_locked(volume, capacity, needs_node), needs_node

    def grow_locked(self, volume: Volume, capacity: CapacityRange, mount: bool) -> int:
        """Grow the backing file (and any loop device on it) to fit `capacity`; the
        caller holds the volume's lock and checked the range. Returns the new size.

        Raises OutOfRange, ResourceExhausted.
        """
        volume_id = volume.id
        size = self.resolve_size(capacity, volume.fs_type, False)
        size = fit_growth(volume.fs_type, mount, volume.capacity_bytes, size,
                          capacity.limit_bytes, f"volume {volume_id}")
        thick = volume.provisioning is Provisioning.THICK
        grow_by = size - volume.capacity_bytes
        report = self.capacity(volume.provisioning)
        if grow_by > report.available_bytes:
            raise ResourceExhausted(
                f"volume {volume_id}: growing by {grow_by} bytes does not fit; the pool"
                f" {self.pool.root} can offer {report.available_bytes} bytes"
            )
        path = self.pool.image_path(volume_id)
        try:
            files.grow_image(path, size, preallocate=thick)
            crash_point("expand.file_grown")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(
                    f"volume {volume_id}: the pool ran out of space growing to {size}"
                ) from exc
            raise
        for device in self.host.loops.find_by_backing_file(path):
            self.host.loops.refresh_capacity(device.path)
        crash_point("expand.device_refreshed")
        self.catalog.set_volume_capacity(volume_id, size)
        crash_point("expand.committed")
        log.info("volume %s grown from %d to %d bytes", volume_id, volume.capacity_bytes,
                 size)
        return size

    # --- ControllerModifyVolume ----------------------------------------------------------

    def modify(self, volume_id: str, mutable_parameters: dict[str, str]) -> None:
        """Change a volume's mutable parameters; a loop device attached here changes at
        once. Idempotent. Raises InvalidArgument, NotFound, Aborted."""
        v.require(volume_id, "volume_id")
        with self.locks.hold(volume_id, "ControllerModifyVolume"):
            volume = self.get_ready_volume(volume_id)
            values = check_mutable(mutable_parameters, f"volume {volume_id}")
            merged = {**volume.mutable_parameter_map, **values}
            for device in self.host.loops.find_by_backing_file(self.pool.image_path(volume_id)):
                apply_mutable(self.host, device.path, values)
            self.catalog.set_mutable_parameters(volume_id, merged)
            self.records.put_volume(replace(volume, mutable_parameters=tuple(sorted(
                merged.items()))), self.records.format_state(volume_id))

    # --- ControllerPublish / Unpublish -----------------------------------------------

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
            raise InvalidArgument(f"volume {volume_id}: volume_capability is required")
        check_capability(cap, self.config.filesystems)
        with self.locks.hold(volume_id, "ControllerPublishVolume"):
            volume = self.get_ready_volume(volume_id)
            if node_id != self.config.node_id:
                raise NotFound(
                    f"node {node_id!r} is unknown: volume {volume_id} lives on node"
                    f" {self.config.node_id!r} and cannot be reached from elsewhere"
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
                    raise AlreadyExists(
                        f"volume {volume_id} is already published to node {node_id} with"
                        f" readonly={att.readonly}, mode {att.access_mode.value},"
                        f" {att.access_type.value} access"
                    )
                raise FailedPrecondition(
                    f"volume {volume_id} is published to node {att.node_id} in mode"
                    f" {att.access_mode.value}; unpublish it there first"
                )
            limit = self.config.max_volumes_per_node
            if limit and self.catalog.attachment_count(node_id) >= limit:
                raise ResourceExhausted(
                    f"node {node_id} already has {limit} volumes published, its maximum"
                )
            self.catalog.put_attachment(wanted)
            crash_point("attach.recorded")
            return context

    def unpublish(self, volume_id: str, node_id: str) -> None:
        """Forget an attachment (or all of a volume's when node_id is empty). Idempotent:
        an unknown volume or node is success. Raises InvalidArgument, Aborted."""
        v.require(volume_id, "volume_id")
        if not v.is_volume_id(volume_id):
            return
        with self.locks.hold(volume_id, "ControllerUnpublishVolume"):
            # The node side (NodeUnpublish, NodeUnstage) works on a failed pool, so
            # pods are released; only this record waits for the repair.
            self._require_working_pool(f"volume {volume_id}")
            for att in self.catalog.attachments_of(volume_id):
                if not node_id or att.node_id == node_id:
                    self.catalog.remove_attachment(volume_id, att.node_id)
                    crash_point("detach.removed")


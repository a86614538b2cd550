"""Domain types shared by the core, the catalog and the rpc layer (frozen dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class AccessType(enum.Enum):
    MOUNT = "mount"
    BLOCK = "block"


class AccessMode(enum.Enum):
    """The CSI access modes; the names match the proto enum."""

    UNKNOWN = "UNKNOWN"
    SINGLE_NODE_WRITER = "SINGLE_NODE_WRITER"
    SINGLE_NODE_READER_ONLY = "SINGLE_NODE_READER_ONLY"
    MULTI_NODE_READER_ONLY = "MULTI_NODE_READER_ONLY"
    MULTI_NODE_SINGLE_WRITER = "MULTI_NODE_SINGLE_WRITER"
    MULTI_NODE_MULTI_WRITER = "MULTI_NODE_MULTI_WRITER"
    SINGLE_NODE_SINGLE_WRITER = "SINGLE_NODE_SINGLE_WRITER"
    SINGLE_NODE_MULTI_WRITER = "SINGLE_NODE_MULTI_WRITER"

    @property
    def supported(self) -> bool:
        return self in SUPPORTED_ACCESS_MODES

    @property
    def read_only(self) -> bool:
        return self in (AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY)


# A loop device lives on one node, so only the single-node modes can be honoured.
SUPPORTED_ACCESS_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)


class Provisioning(enum.Enum):
    THIN = "thin"  # sparse backing file: space is taken as data is written
    THICK = "thick"  # fully allocated at creation: the size is guaranteed


class VolumeState(enum.Enum):
    CREATING = "creating"  # intent recorded, backing file may be incomplete
    READY = "ready"
    DELETING = "deleting"  # intent recorded, backing file may still exist


@dataclass(frozen=True)
class Capability:
    """One requested volume capability."""

    access_type: AccessType
    access_mode: AccessMode
    fs_type: str = ""  # mount only; "" means the volume's default
    mount_flags: tuple[str, ...] = ()
    volume_mount_group: str = ""


@dataclass(frozen=True)
class CapacityRange:
    required_bytes: int = 0  # 0: not set
    limit_bytes: int = 0  # 0: not set


@dataclass(frozen=True)
class Volume:
    """A volume as the catalog records it."""

    id: str
    name: str
    capacity_bytes: int
    fs_type: str
    provisioning: Provisioning
    parameters: tuple[tuple[str, str], ...]
    state: VolumeState
    created_at: float
    seq: int = 0
    # "snapshot:<id>" or "volume:<id>" when the volume was made from one; "" otherwise.
    content_source: str = ""
    mutable_parameters: tuple[tuple[str, str], ...] = ()
    # The logical block size its loop device is attached with. New volumes get 4096
    # (mkfs and 4 KiB I/O are faster); volumes made before it was recorded keep 512,
    # because a filesystem made with 1 KiB blocks cannot be mounted on a 4 KiB device.
    block_size: int = 512

    @property
    def parameter_map(self) -> dict[str, str]:
        return dict(self.parameters)

    @property
    def mutable_parameter_map(self) -> dict[str, str]:
        return dict(self.mutable_parameters)


class SnapshotState(enum.Enum):
    """Where a snapshot is in its life, as VolumeState for volumes: CREATING and
    DELETING record an intent whose image may be incomplete or may still exist."""

    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time image of a volume's backing file."""

    id: str
    name: str
    source_volume_id: str
    size_bytes: int  # the source volume's capacity at capture time
    created_at: float
    state: SnapshotState
    fs_type: str = ""
    method: str = ""  # "reflink" or "copy"
    group_id: str = ""
    seq: int = 0

    @property
    def ready(self) -> bool:
        return self.state is SnapshotState.READY


@dataclass(frozen=True)
class GroupSnapshot:
    """Snapshots of several volumes taken at one instant (GroupController)."""

    id: str
    name: str
    created_at: float
    state: SnapshotState
    snapshot_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attachment:
    """A ControllerPublish record: volume attached to a node."""

    volume_id: str
    node_id: str
    readonly: bool
    access_mode: AccessMode
    access_type: AccessType


class StagingState(enum.Enum):
    STAGING = "staging"
    STAGED = "staged"
    UNSTAGING = "unstaging"
    # Staged, but learned from the kernel at start-up (the catalog had lost the
    # record): its device and mounts are known, the flags it was staged with are not,
    # so the next NodeStageVolume for it is taken as it comes and recorded.
    ADOPTED = "adopted"


@dataclass(frozen=True)
class Staging:
    """A NodeStage record: which path a volume was staged at and how."""

    volume_id: str
    staging_path: str
    access_type: AccessType
    fs_type: str
    mount_flags: tuple[str, ...]
    readonly: bool
    device: str
    state: StagingState

    @property
    def staged(self) -> bool:
        """Staged and in use: recorded by a finished NodeStageVolume, or adopted."""
        return self.state in (StagingState.STAGED, StagingState.ADOPTED)

    def at(self, path: str) -> bool:
        """Whether this staging is at `path`; an adopted block staging, whose path
        the kernel cannot tell, is at whatever path the CO names."""
        return self.staging_path == path or (
            self.state is StagingState.ADOPTED and not self.staging_path)


@dataclass(frozen=True)
class PoolSpace:
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class VolumeStats:
    """Usage of a published volume, as NodeGetVolumeStats reports it."""

    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int = 0
    free_inodes: int = 0
    used_inodes: int = 0
    is_block: bool = False
    abnormal: bool = False
    message: str = ""


@dataclass(frozen=True)
class Page:
    """One page of a listing, with the token that continues it ("" at the end)."""

    items: tuple[object, ...] = field(default_factory=tuple)
    next_token: str = ""

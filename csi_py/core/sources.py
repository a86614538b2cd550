"""Content sources of new volumes: finding the snapshot or volume a volume is made
from, and copying its data into the new image."""

from __future__ import annotations

from dataclasses import dataclass

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.core.capture import Capturer
from csi_py.core.locks import KeyedTryLock
from csi_py.core.pool import Pool
from csi_py.core.topology import restore_there, snapshot_owner_elsewhere
from csi_py.domain.errors import InvalidArgument, NotFound, ResourceExhausted
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import VolumeState
from csi_py.domain.snapshot_ids import is_snapshot_id
from csi_py.linux import copies
from csi_py.state.catalog import Catalog
from csi_py.state.records import Records, SnapshotRecord, VolumeRecord


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


@dataclass(eq=False)
class Sources:
    """Resolves content sources against the catalog and fills new images from them."""

    config: Config
    catalog: Catalog
    pool: Pool
    locks: KeyedTryLock
    capturer: Capturer
    records: Records

    def resolve(self, name: str, source: ContentSource) -> Origin:
        """The snapshot or volume a new volume is made from. Read-only. Raises
        InvalidArgument, NotFound, ResourceExhausted (a snapshot whose id names another
        node)."""
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
                    raise ResourceExhausted(restore_there(elsewhere, source.id, self.config),
                                            subject=volume_subject(name=name))
                raise NotFound(f"source snapshot {source.id!r} does not exist"
                               f" on node {self.config.node_id!r} (snapshots stay on their node)",
                               subject=volume_subject(name=name))
            parent = self.catalog.get_volume(snap.source_volume_id) \
                if v.is_volume_id(snap.source_volume_id) else None
            return Origin(source, self.pool.snapshot_path(snap.id), snap.size_bytes,
                          snap.fs_type, parent.block_size if parent else 512)
        if source.kind == "volume":
            vol = self.catalog.get_volume(source.id) if v.is_volume_id(source.id) else None
            if vol is None or vol.state is not VolumeState.READY:
                raise NotFound(f"source volume {source.id!r} does not exist",
                               subject=volume_subject(name=name))
            return Origin(source, self.pool.image_path(vol.id), vol.capacity_bytes,
                          vol.fs_type, vol.block_size)
        raise InvalidArgument(f"unknown content source kind {source.kind!r}",
                              subject=volume_subject(name=name))

    def format_of(self, origin: Origin | None) -> str:
        """A copy holds what its source held: its format state comes along."""
        if origin is None:
            return ""
        rec = self.records.get(origin.source.id)
        return rec.format if isinstance(rec, (VolumeRecord, SnapshotRecord)) else ""

    def fill(self, origin: Origin, path: str, thick: bool) -> None:
        """Copy the source's data into a new image at `path`: a reflink where possible,
        except for a thick volume, whose blocks must be its own (never copy-on-write).
        A source volume is locked (and frozen if staged) for the copy; raises Aborted
        when it is busy, OSError from the copy."""
        if origin.source.kind == "volume":
            with self.locks.hold(origin.source.id, "CreateVolume (clone source)"):
                self.capturer.capture([(origin.image, path)], [origin.source.id],
                                      allow_reflink=not thick)
        else:
            copies.clone_file(origin.image, path, allow_reflink=not thick)

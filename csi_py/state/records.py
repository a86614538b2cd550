"""Self-describing pool images: a small JSON record per volume and per snapshot.

The catalog is the index; these records are what makes it rebuildable. Each image in
the pool has a record in ``<pool>/records/<id>.json`` that says what it is (id, name,
size, filesystem, parameters, content source; for snapshots also the source volume
and the group they belong to) and whether its filesystem was ever completely made
(``format``: "" unknown, "formatting" while mkfs runs, "formatted" once it finished).
A lost, empty or garbled catalog is rebuilt from them (core/rebuild.py).

Every write replaces the whole record atomically (temp file, fsync, rename, fsync of
the directory). Records are written after the image is complete and before the
catalog commits it, and removed after the image, so a record never describes an
image that was never finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container
from dataclasses import dataclass, replace

from csi_py.domain.model import (
    GroupSnapshot,
    Provisioning,
    Snapshot,
    SnapshotState,
    Volume,
    VolumeState,
)
from csi_py.domain.snapshot_ids import file_key
from csi_py.linux import files

RECORD_VERSION = 1
SUFFIX = ".json"
# Format states (see the module docstring).
FORMAT_UNKNOWN = ""
FORMATTING = "formatting"
FORMATTED = "formatted"
_FORMATS = (FORMAT_UNKNOWN, FORMATTING, FORMATTED)


class RecordError(ValueError):
    """A record file cannot be read or does not describe a volume or snapshot."""


@dataclass(frozen=True)
class VolumeRecord:
    volume: Volume
    format: str = FORMAT_UNKNOWN


@dataclass(frozen=True)
class SnapshotRecord:
    snapshot: Snapshot
    group_name: str = ""
    group_created_at: float = 0.0
    # The source volume's format state when the snapshot was cut.
    format: str = FORMAT_UNKNOWN


@dataclass
class Scan:
    """What the records directory holds."""

    volumes: list[VolumeRecord]
    snapshots: list[SnapshotRecord]
    unreadable: list[str]  # "path: why"


def _encode_volume(rec: VolumeRecord) -> bytes:
    vol = rec.volume
    return json.dumps({
        "kind": "volume", "version": RECORD_VERSION, "id": vol.id, "name": vol.name,
        "capacity_bytes": vol.capacity_bytes, "fs_type": vol.fs_type,
        "provisioning": vol.provisioning.value, "parameters": dict(vol.parameters),
        "created_at": vol.created_at, "content_source": vol.content_source,
        "mutable_parameters": dict(vol.mutable_parameters), "format": rec.format,
        "block_size": vol.block_size,
    }, sort_keys=True).encode()


def _encode_snapshot(rec: SnapshotRecord) -> bytes:
    snap = rec.snapshot
    return json.dumps({
        "kind": "snapshot", "version": RECORD_VERSION, "id": snap.id, "name": snap.name,
        "source_volume_id": snap.source_volume_id, "size_bytes": snap.size_bytes,
        "created_at": snap.created_at, "fs_type": snap.fs_type, "method": snap.method,
        "group_id": snap.group_id, "group_name": rec.group_name,
        "group_created_at": rec.group_created_at, "format": rec.format,
    }, sort_keys=True).encode()


def _str_map(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError("a parameter map is not a string map")
    return tuple(sorted(value.items()))


def _block_size(value: object) -> int:
    if not isinstance(value, int) or value not in (512, 1024, 2048, 4096):
        raise RecordError(f"bad block size {value!r}")
    return value


def decode(data: bytes) -> VolumeRecord | SnapshotRecord:
    """Parse one record. Raises RecordError for anything that is not a record this
    version wrote (garbled, truncated, missing or mistyped fields)."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            raise RecordError(f"not a version {RECORD_VERSION} record")
        fmt = str(raw.get("format", ""))
        if fmt not in _FORMATS:
            raise RecordError(f"unknown format state {fmt!r}")
        if raw.get("kind") == "volume":
            return VolumeRecord(Volume(
                id=str(raw["id"]), name=str(raw["name"]),
                capacity_bytes=int(raw["capacity_bytes"]), fs_type=str(raw["fs_type"]),
                provisioning=Provisioning(raw["provisioning"]),
                parameters=_str_map(raw["parameters"]), state=VolumeState.READY,
                created_at=float(raw["created_at"]),
                content_source=str(raw["content_source"]),
                mutable_parameters=_str_map(raw["mutable_parameters"]),
                # Records written before the field existed describe 512-byte volumes.
                block_size=_block_size(raw.get("block_size", 512)),
            ), fmt)
        if raw.get("kind") == "snapshot":
            return SnapshotRecord(Snapshot(
                id=str(raw["id"]), name=str(raw["name"]),
                source_volume_id=str(raw["source_volume_id"]),
                size_bytes=int(raw["size_bytes"]), created_at=float(raw["created_at"]),
                state=SnapshotState.READY, fs_type=str(raw["fs_type"]),
                method=str(raw["method"]), group_id=str(raw["group_id"]),
            ), str(raw["group_name"]), float(raw["group_created_at"]), fmt)
        raise RecordError(f"unknown record kind {raw.get('kind')!r}")
    except RecordError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{type(exc).__name__}: {exc}") from None


class Records:
    """The records directory of one pool. Stateless apart from its path; every
    method goes to disk, so several processes (the driver, `csi-py pool check`) may
    use it at once."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, object_id: str) -> str:
        """The record file of a volume or snapshot id (the caller validated the id). A
        snapshot's is named by its key (`snap-<hex>`), like its image; the record
        inside keeps the whole id, node part included."""
        return os.path.join(self.directory, self.name_of(object_id))

    def put_volume(self, volume: Volume, format_state: str = FORMAT_UNKNOWN) -> None:
        """Write (or replace) a volume's record. Idempotent. Raises OSError."""
        files.write_atomic(self.path(volume.id), _encode_volume(VolumeRecord(
            replace(volume, state=VolumeState.READY, seq=0), format_state)))

    def put_snapshot(self, snap: Snapshot, group: GroupSnapshot | None = None,
                     format_state: str = FORMAT_UNKNOWN) -> None:
        """Write (or replace) a snapshot's record. Idempotent. Raises OSError."""
        files.write_atomic(self.path(snap.id), _encode_snapshot(SnapshotRecord(
            replace(snap, state=SnapshotState.READY, seq=0),
            group.name if group else "", group.created_at if group else 0.0, format_state)))

    def get(self, object_id: str) -> VolumeRecord | SnapshotRecord | None:
        """The record of an id, or None when there is none or it is unreadable.
        Read-only; never raises for a missing or garbled record."""
        try:
            return decode(files.read_small(self.path(object_id)))
        except (OSError, RecordError):
            return None

    def get_volume(self, volume_id: str) -> VolumeRecord | None:
        rec = self.get(volume_id)
        return rec if isinstance(rec, VolumeRecord) else None

    def format_state(self, volume_id: str) -> str:
        """The volume's format state ("" when unknown or no record). Read-only."""
        rec = self.get_volume(volume_id)
        return rec.format if rec else FORMAT_UNKNOWN

    def set_format(self, volume: Volume, format_state: str) -> None:
        """Record the volume's format state, keeping the rest of its record (written
        from `volume` if it had none). Raises OSError: a format must not start unless
        "formatting" is on disk."""
        self.put_volume(volume, format_state)

    def remove(self, object_id: str) -> None:
        """Remove a record. Idempotent. Raises OSError."""
        files.remove_file(self.path(object_id))

    def names(self) -> set[str]:
        """The record file names in the directory (`<id or key>.json`), read from the
        directory alone. Read-only. Raises OSError when it cannot be read."""
        return {name for name in files.list_names(self.directory)
                if name.endswith(SUFFIX) and not name.startswith(".")}

    @staticmethod
    def name_of(object_id: str) -> str:
        """The file name (no directory) of an id's record."""
        return file_key(object_id) + SUFFIX

    def scan(self, skip: Container[str] = ()) -> Scan:
        """Every record in the directory, except the file names in `skip` (not read);
        unreadable ones are listed, never removed. Read-only. Raises OSError when the
        directory itself cannot be read."""
        found = Scan([], [], [])
        for name in files.list_names(self.directory):
            if not name.endswith(SUFFIX) or name.startswith(".") or name in skip:
                continue
            path = os.path.join(self.directory, name)
            try:
                rec = decode(files.read_small(path))
            except (OSError, RecordError) as exc:
                found.unreadable.append(f"{path}: {exc}")
                continue
            object_id = rec.volume.id if isinstance(rec, VolumeRecord) else rec.snapshot.id
            if name != file_key(object_id) + SUFFIX:
                found.unreadable.append(f"{path}: it describes {object_id}")
            elif isinstance(rec, VolumeRecord):
                found.volumes.append(rec)
            else:
                found.snapshots.append(rec)
        return found

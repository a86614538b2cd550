"""Rows of the catalog's tables and the domain's records they hold, both ways. Pure."""

from __future__ import annotations

import enum
import json
from dataclasses import fields

from csi_py.domain.model import (
    AccessMode,
    AccessType,
    Attachment,
    Provisioning,
    Snapshot,
    SnapshotState,
    Staging,
    StagingState,
    Volume,
    VolumeState,
)

VOLUME_COLUMNS = (
        "seq, id, name, capacity_bytes, fs_type, provisioning, parameters, state, created_at,"
        " content_source, mutable_parameters, block_size"
)
SNAPSHOT_COLUMNS = (
        "seq, id, name, source_volume_id, size_bytes, created_at, state, fs_type, method, group_id"
)


def volume_of(row: tuple[object, ...]) -> Volume:
    """The volume a row of its table holds."""
    seq, vid, name, cap, fs, prov, params, state, created, source, mutable, bs = row
    return Volume(
        id=str(vid),
        name=str(name),
        capacity_bytes=int(cap),  # type: ignore[call-overload]
        fs_type=str(fs),
        provisioning=Provisioning(prov),
        parameters=tuple(sorted(json.loads(str(params)).items())),
        state=VolumeState(state),
        created_at=float(created),  # type: ignore[arg-type]
        seq=int(seq),  # type: ignore[call-overload]
        content_source=str(source),
        mutable_parameters=tuple(sorted(json.loads(str(mutable)).items())),
        block_size=int(bs),  # type: ignore[call-overload]
    )


def attachment_of(row: tuple[object, ...]) -> Attachment:
    """The attachment a row of its table holds."""
    vid, node, ro, mode, atype = row
    return Attachment(
        volume_id=str(vid),
        node_id=str(node),
        readonly=bool(ro),
        access_mode=AccessMode(mode),
        access_type=AccessType(atype),
    )


def staging_of(row: tuple[object, ...]) -> Staging:
    """The staging a row of its table holds."""
    vid, path, atype, fs, flags, ro, device, state = row
    return Staging(
        volume_id=str(vid),
        staging_path=str(path),
        access_type=AccessType(atype),
        fs_type=str(fs),
        mount_flags=tuple(json.loads(str(flags))),
        readonly=bool(ro),
        device=str(device),
        state=StagingState(state),
    )


def snapshot_of(row: tuple[object, ...]) -> Snapshot:
    """The snapshot a row of its table holds."""
    seq, sid, name, source, size, created, state, fs, method, group = row
    return Snapshot(
        id=str(sid),
        name=str(name),
        source_volume_id=str(source),
        size_bytes=int(size),  # type: ignore[call-overload]
        created_at=float(created),  # type: ignore[arg-type]
        state=SnapshotState(state),
        fs_type=str(fs),
        method=str(method),
        group_id=str(group),
        seq=int(seq),  # type: ignore[call-overload]
    )


def record_row(record: Attachment | Staging) -> dict[str, object]:
    """The row that holds `record` in its table (attachments, stagings), whose columns
    are named as its fields: enums by their value, flags as 0 or 1, tuples as JSON
    lists. Pure; attachment_of and staging_of read it back."""
    return {f.name: _column(getattr(record, f.name)) for f in fields(record)}


def _column(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return value

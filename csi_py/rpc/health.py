"""Health conditions (core/health_conditions.py) as CSI v1.13 messages. Pure."""

from __future__ import annotations

from csi_py._proto import csi_pb2 as pb
from csi_py.core.health_conditions import HealthCondition, StorageCondition
from csi_py.domain.model import Volume

Entry = pb.VolumeHealth.VolumeHealthEntry
Backend = pb.NodeGetStorageHealthResponse.StorageBackendHealth


def volume_health(volume_id: str, conditions: tuple[HealthCondition, ...]) -> pb.VolumeHealth:
    return pb.VolumeHealth(
        volume_id=volume_id,
        health_statuses=[
            Entry(status=pb.VolumeHealthErrorType.Value(c.type.value), reason=c.reason,
                  message=c.message)
            for c in conditions
        ],
    )


def volume_health_list(
    entries: tuple[tuple[Volume, tuple[HealthCondition, ...]], ...],
) -> list[pb.VolumeHealth]:
    return [volume_health(vol.id, conditions) for vol, conditions in entries]


def storage_health(conditions: tuple[StorageCondition, ...]) -> pb.NodeGetStorageHealthResponse:
    # Every condition of the pool affects all its volumes: no volume_capability.
    return pb.NodeGetStorageHealthResponse(backend_health=[
        Backend(status=pb.StorageHealthErrorType.Value(c.type.value), reason=c.reason,
                message=c.message)
        for c in conditions
    ])

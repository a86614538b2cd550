"""A small CSI client over a unix socket, used by the CLI, the demo, tests and
benchmarks. Works against any CSI driver, not only csi-py.

Tests and benchmarks use the raw stubs (``client.controller.CreateVolume(...)``);
the CLI and the demo use :class:`Calls`' methods, which hide the wire format and
gRPC's errors so that only rpc/ deals in them."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc

Mode = pb.VolumeCapability.AccessMode.Mode
T = TypeVar("T")


def mount_capability(
    fs_type: str = "",
    mode: pb.VolumeCapability.AccessMode.Mode.ValueType = Mode.SINGLE_NODE_WRITER,
    flags: tuple[str, ...] = (),
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


def block_capability(
    mode: pb.VolumeCapability.AccessMode.Mode.ValueType = Mode.SINGLE_NODE_WRITER,
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


class ClientError(Exception):
    """A CSI call the driver answered with an error: ``code`` is the gRPC status code's
    name ("NOT_FOUND", "UNAVAILABLE", ...), ``message`` the driver's own words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as CreateVolume or ListVolumes describe it."""

    volume_id: str
    capacity_bytes: int
    context: dict[str, str]
    topology: dict[str, str]  # the first accessible topology's segments, {} if none


@dataclass(frozen=True)
class ListedVolume:
    volume: VolumeInfo
    published_node_ids: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    source_volume_id: str
    size_bytes: int
    ready_to_use: bool
    created: datetime.datetime  # naive, in UTC


@dataclass(frozen=True)
class PluginInfo:
    name: str
    vendor_version: str
    manifest: dict[str, str]


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    topology: dict[str, str]


@dataclass(frozen=True)
class Usage:
    """One NodeGetVolumeStats usage entry; ``unit`` is "bytes" or "inodes"."""

    unit: str
    used: int
    total: int


# A call's timeout when none is given: the client's own (None waits for ever).
_CLIENT_TIMEOUT: Any = object()


def _volume(vol: pb.Volume) -> VolumeInfo:
    topology = dict(vol.accessible_topology[0].segments) if vol.accessible_topology else {}
    return VolumeInfo(vol.volume_id, vol.capacity_bytes, dict(vol.volume_context), topology)


def _snapshot(snap: pb.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(snap.snapshot_id, snap.source_volume_id, snap.size_bytes,
                    snap.ready_to_use, snap.creation_time.ToDatetime())


def _capability(block: bool, fs_type: str) -> pb.VolumeCapability:
    return block_capability() if block else mount_capability(fs_type)


class Calls:
    """The CSI calls the CLI and the demo make, as methods that take and return plain
    values and raise :class:`ClientError` for any error the driver (or gRPC) answers.
    Mixed into :class:`Client`; whether a call is idempotent is the RPC's own rule
    (CSI's: all of them are)."""

    identity: Any
    controller: Any
    node: Any
    timeout: float | None

    def _call(self, method: Callable[..., T], request: Any, timeout: Any = _CLIENT_TIMEOUT) -> T:
        try:
            return method(request, timeout=self.timeout if timeout is _CLIENT_TIMEOUT
                          else timeout)
        except grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details() or "") from None

    def _pages(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Every entry of a paged list call, fetched 500 at a time."""
        request.max_entries = 500
        while True:
            resp = self._call(method, request)
            yield from resp.entries
            if not resp.next_token:
                return
            request.starting_token = resp.next_token

    # --- identity and node information ---

    def plugin_info(self, timeout: Any = _CLIENT_TIMEOUT) -> PluginInfo:
        resp = self._call(self.identity.GetPluginInfo, pb.GetPluginInfoRequest(), timeout)
        return PluginInfo(resp.name, resp.vendor_version, dict(resp.manifest))

    def probe(self, timeout: Any = _CLIENT_TIMEOUT) -> bool:
        return bool(self._call(self.identity.Probe, pb.ProbeRequest(), timeout).ready.value)

    def node_info(self, timeout: Any = _CLIENT_TIMEOUT) -> NodeInfo:
        resp = self._call(self.node.NodeGetInfo, pb.NodeGetInfoRequest(), timeout)
        return NodeInfo(resp.node_id, dict(resp.accessible_topology.segments))

    def available_capacity(self, timeout: Any = _CLIENT_TIMEOUT) -> int:
        return int(self._call(self.controller.GetCapacity, pb.GetCapacityRequest(),
                              timeout).available_capacity)

    # --- volumes ---

    def create_volume(self, name: str, size: int = 0, *, block: bool = False,
                      fs_type: str = "", parameters: dict[str, str] | None = None,
                      snapshot_id: str = "", source_volume_id: str = "") -> VolumeInfo:
        """CreateVolume with one capability (block, or a mount of ``fs_type``); a size
        of 0 leaves the size to the driver, and a snapshot or volume id makes it a
        restore or a clone."""
        request = pb.CreateVolumeRequest(name=name, parameters=parameters or {},
                                         volume_capabilities=[_capability(block, fs_type)])
        if size:
            request.capacity_range.required_bytes = size
        if snapshot_id:
            request.volume_content_source.snapshot.snapshot_id = snapshot_id
        elif source_volume_id:
            request.volume_content_source.volume.volume_id = source_volume_id
        return _volume(self._call(self.controller.CreateVolume, request).volume)

    def delete_volume(self, volume_id: str) -> None:
        self._call(self.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=volume_id))

    def list_volumes(self) -> Iterator[ListedVolume]:
        for entry in self._pages(self.controller.ListVolumes, pb.ListVolumesRequest()):
            yield ListedVolume(_volume(entry.volume), tuple(entry.status.published_node_ids))

    def volume_health(self, volume_id: str) -> tuple[str, ...]:
        """The volume's health problems as "Reason: message", () when healthy."""
        health = self._call(self.controller.ControllerGetVolumeHealth,
                            pb.ControllerGetVolumeHealthRequest(volume_id=volume_id)
                            ).volume_health
        return tuple(f"{h.reason}: {h.message}" for h in health.health_statuses)

    def all_volume_health(self) -> dict[str, tuple[str, ...]]:
        """Every volume's health problems by id (CSI v1.13 ControllerListVolumeHealth)."""
        return {entry.volume_id: tuple(f"{h.reason}: {h.message}"
                                       for h in entry.health_statuses)
                for entry in self._pages(self.controller.ControllerListVolumeHealth,
                                         pb.ControllerListVolumeHealthRequest())}

    def controller_publish(self, volume_id: str, node_id: str, *, block: bool = False,
                           fs_type: str = "") -> dict[str, str]:
        """ControllerPublishVolume; returns the publish context."""
        resp = self._call(self.controller.ControllerPublishVolume,
                          pb.ControllerPublishVolumeRequest(
                              volume_id=volume_id, node_id=node_id,
                              volume_capability=_capability(block, fs_type)))
        return dict(resp.publish_context)

    def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        self._call(self.controller.ControllerUnpublishVolume,
                   pb.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id))

    def node_stage(self, volume_id: str, staging_path: str, publish_context: dict[str, str],
                   *, block: bool = False, fs_type: str = "") -> None:
        self._call(self.node.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging_path,
            volume_capability=_capability(block, fs_type), publish_context=publish_context))

    def node_publish(self, volume_id: str, staging_path: str, target_path: str,
                     publish_context: dict[str, str], *, block: bool = False,
                     fs_type: str = "") -> None:
        self._call(self.node.NodePublishVolume, pb.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=staging_path, target_path=target_path,
            volume_capability=_capability(block, fs_type), publish_context=publish_context))

    def node_unpublish(self, volume_id: str, target_path: str) -> None:
        self._call(self.node.NodeUnpublishVolume,
                   pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target_path))

    def node_unstage(self, volume_id: str, staging_path: str) -> None:
        self._call(self.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging_path))

    def volume_stats(self, volume_id: str, volume_path: str) -> list[Usage]:
        resp = self._call(self.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
            volume_id=volume_id, volume_path=volume_path))
        return [Usage(pb.VolumeUsage.Unit.Name(u.unit).lower(), u.used, u.total)
                for u in resp.usage]

    # --- snapshots ---

    def create_snapshot(self, volume_id: str, name: str, timeout: Any = _CLIENT_TIMEOUT
                        ) -> SnapshotInfo:
        resp = self._call(self.controller.CreateSnapshot,
                          pb.CreateSnapshotRequest(source_volume_id=volume_id, name=name),
                          timeout)
        return _snapshot(resp.snapshot)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._call(self.controller.DeleteSnapshot,
                   pb.DeleteSnapshotRequest(snapshot_id=snapshot_id))

    def list_snapshots(self, volume_id: str = "", snapshot_id: str = ""
                       ) -> Iterator[SnapshotInfo]:
        request = pb.ListSnapshotsRequest(source_volume_id=volume_id, snapshot_id=snapshot_id)
        for entry in self._pages(self.controller.ListSnapshots, request):
            yield _snapshot(entry.snapshot)


@dataclass
class Client(Calls):
    """Stubs for the three services on one channel, and the :class:`Calls` over them.
    Close it when done."""

    endpoint: str
    timeout: float | None = 120.0

    def __post_init__(self) -> None:
        target = self.endpoint if self.endpoint.startswith("unix:") else "unix:" + self.endpoint
        self.channel = grpc.insecure_channel(target)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until Probe says ready. Raises TimeoutError with the last error seen."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if self.identity.Probe(pb.ProbeRequest(), timeout=2).ready.value:
                    return
                last = "not ready"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.05)
        raise TimeoutError(f"driver at {self.endpoint} not ready after {timeout}s ({last})")

"""Helpers for the per-RPC conformance tests: error assertions, small volumes, and a
node session that always unpublishes and unstages what a test set up."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing
from typing import Any

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.linux.filesystems import FILESYSTEMS
from csi_py.rpc.client import mount_capability
from tests import lifecycle
from tests.kernel_leaks import loops_backed_by
from tests.lifecycle import MiB

SMALL = 32 * MiB  # ext4 and block volumes: cheap to format, sparse on disk
XFS_MIN = FILESYSTEMS["xfs"].min_bytes  # xfsprogs refuses anything smaller

def expect_error(
    call: Callable[..., Any], request: Any, code: grpc.StatusCode, *words: str
) -> str:
    """Call `call(request)`, assert it fails with `code` and that the status message
    names every one of `words` (case-insensitive). Returns the message."""
    try:
        response = call(request, timeout=60)
    except grpc.RpcError as exc:
        message = exc.details() or ""
        assert exc.code() == code, (
            f"expected {code.name}, got {exc.code().name}: {message}"
        )
        for word in words:
            assert word.lower() in message.lower(), (
                f"{code.name} message does not name {word!r}: {message!r}"
            )
        return message
    raise AssertionError(f"expected {code.name}, the call succeeded: {response}")


def expect_required(call: Callable[..., Any], request: Any, *fields: str) -> None:
    """For each of `fields` in turn: `request` without it fails INVALID_ARGUMENT with a
    message that names the field, says it is required and, while the request still
    has its volume_id, names the volume."""
    for name in fields:
        partial = type(request)()
        partial.CopyFrom(request)
        partial.ClearField(name)
        words = [name, "required"]
        if name != "volume_id" and getattr(partial, "volume_id", ""):
            words.append(partial.volume_id)
        expect_error(call, partial, grpc.StatusCode.INVALID_ARGUMENT, *words)


def create_request(
    name: str,
    size: int = SMALL,
    caps: list[pb.VolumeCapability] | None = None,
    params: dict[str, str] | None = None,
    limit: int = 0,
) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(
        name=name,
        capacity_range=pb.CapacityRange(required_bytes=size, limit_bytes=limit),
        volume_capabilities=caps if caps is not None else [mount_capability("ext4")],
        parameters=params or {},
    )


def create(driver: Any, name: str, size: int = SMALL, **kwargs: Any) -> pb.Volume:
    """Create a small volume and return it."""
    return driver.client.controller.CreateVolume(
        create_request(name, size, **kwargs), timeout=60
    ).volume


def topology_key(driver: Any) -> str:
    """The one topology key the driver reports for its node (NodeGetInfo)."""
    info = driver.client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
    (key,) = info.accessible_topology.segments.keys()
    return key


def volume_image(driver: Any, volume_id: str) -> str:
    """The path of a volume's image in the driver's pool."""
    return os.path.join(driver.pool, "volumes", volume_id + ".img")


def loops_of(driver: Any, volume_id: str) -> list[str]:
    """The sysfs names (loopN) of the loop devices on a volume's image, read from sysfs
    (not through the driver)."""
    return loops_backed_by(volume_image(driver, volume_id))


def volume_files(driver: Any) -> set[str]:
    """The files in the pool's volumes directory (backing images and temp files)."""
    return set(os.listdir(os.path.join(driver.pool, "volumes")))


def unknown_volume_id() -> str:
    """An id of the right shape that no volume has."""
    return "vol-" + "0" * 32


class NodeSession(lifecycle.NodeSession):
    """The shared NodeSession (tests/lifecycle.py) on a test driver: its current client
    (a new one after the test restarts the driver), and the driver for its paths."""

    def __init__(self, driver: Any) -> None:
        super().__init__(lambda: driver.client)
        self.driver = driver


def node_session(driver: Any) -> closing[NodeSession]:
    """A NodeSession on `driver`, closed when the block ends, however it ends."""
    return closing(NodeSession(driver))


# --- snapshots and group snapshots ---------------------------------------------------------


def snapshot(driver: Any, source_volume_id: str, name: str) -> pb.Snapshot:
    """Cut a snapshot and return it."""
    return driver.client.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id=source_volume_id, name=name), timeout=120
    ).snapshot


def snapshot_files(driver: Any) -> set[str]:
    """The files in the pool's snapshots directory (images and temp files)."""
    return set(os.listdir(os.path.join(driver.pool, "snapshots")))


def unknown_snapshot_id() -> str:
    """An id of the right shape that no snapshot has."""
    return "snap-" + "0" * 32


def unknown_group_id() -> str:
    """An id of the right shape that no group snapshot has."""
    return "group-" + "0" * 32


def group_stub(driver: Any) -> csi_pb2_grpc.GroupControllerStub:
    """The GroupController service on the driver's channel."""
    return csi_pb2_grpc.GroupControllerStub(driver.client.channel)


def restore_request(name: str, snapshot_id: str = "", volume_id: str = "", size: int = 0,
                    limit: int = 0, caps: list[pb.VolumeCapability] | None = None
                    ) -> pb.CreateVolumeRequest:
    """A CreateVolumeRequest from a snapshot (or, with volume_id, a clone of a volume)."""
    request = create_request(name, size, caps=caps, limit=limit)
    if snapshot_id:
        request.volume_content_source.snapshot.snapshot_id = snapshot_id
    if volume_id:
        request.volume_content_source.volume.volume_id = volume_id
    return request

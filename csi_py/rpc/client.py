"""A small CSI client over a unix socket, used by the CLI, the demo, tests and
benchmarks. Works against any CSI driver, not only csi-py."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc

Mode = pb.VolumeCapability.AccessMode.Mode



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


@dataclass
class Client:
    """Stubs for the three services on one channel. Close it when done."""

    endpoint: str
    timeout: float = 120.0

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

"""One frozen Config, built from flags and environment and validated once at start-up."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from csi_py.core.model import GiB, MiB

DEFAULT_DRIVER_NAME = "loop.csi-py.io"
SUPPORTED_FILESYSTEMS = ("ext4", "xfs", "btrfs")
# The smallest volume each filesystem's mkfs accepts (xfsprogs 6.x refuses < 300 MiB).
MIN_FS_BYTES = {"ext4": 16 * MiB, "xfs": 300 * MiB, "btrfs": 128 * MiB}
_DRIVER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A flag or environment value is invalid; the message says which and why."""


@dataclass(frozen=True)
class Config:
    endpoint: str
    node_id: str
    pool: str
    driver_name: str = DEFAULT_DRIVER_NAME
    default_fs_type: str = "ext4"
    filesystems: tuple[str, ...] = SUPPORTED_FILESYSTEMS
    default_size_bytes: int = 1 * GiB
    size_granularity_bytes: int = 1 * MiB
    max_volume_bytes: int = 64 * 1024 * GiB
    default_provisioning: str = "thin"
    # Thin volumes may promise this many times the pool's size in total.
    thin_overcommit: float = 10.0
    # Space kept free in the pool for the catalog and filesystem metadata.
    reserve_bytes: int = 256 * MiB
    max_volumes_per_node: int = 0
    direct_io: bool = True
    grpc_workers: int = 16
    # Who grows a volume's backing file: "controller" (ControllerExpandVolume, the usual
    # split) or "node" (NodeExpandVolume on the volume's node; for layouts where the
    # controller-side sidecars may run on another node than the volume).
    expansion: str = "controller"
    # "host:port" or ":port" for the Prometheus endpoint; "" turns it off.
    metrics_address: str = ""
    log_level: str = "INFO"
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def socket_path(self) -> str:
        return self.endpoint.removeprefix("unix://")

    @property
    def topology_key(self) -> str:
        return f"topology.{self.driver_name}/node"

    def validated(self) -> Config:
        """Return self after checking every field. Raises ConfigError."""
        if not self.endpoint.startswith("unix:///"):
            raise ConfigError(f"--endpoint {self.endpoint!r} must look like unix:///path/csi.sock")
        if not self.node_id or len(self.node_id) > 128:
            raise ConfigError("--node-id must be 1 to 128 characters")
        if not _DRIVER_NAME.match(self.driver_name):
            raise ConfigError(
                f"--driver-name {self.driver_name!r} must be a DNS-1123 name of at most 63 chars"
            )
        if not os.path.isabs(self.pool):
            raise ConfigError(f"--pool {self.pool!r} must be an absolute path")
        for fs in self.filesystems:
            if fs not in SUPPORTED_FILESYSTEMS:
                raise ConfigError(f"--filesystems: {fs!r} is not one of {SUPPORTED_FILESYSTEMS}")
        if self.default_fs_type not in self.filesystems:
            raise ConfigError(
                f"--default-fs-type {self.default_fs_type!r} is not in --filesystems"
            )
        if self.default_provisioning not in ("thin", "thick"):
            raise ConfigError("--default-provisioning must be thin or thick")
        if self.size_granularity_bytes <= 0 or self.size_granularity_bytes % 4096:
            raise ConfigError("--size-granularity must be a positive multiple of 4096")
        if self.default_size_bytes <= 0:
            raise ConfigError("--default-size must be positive")
        if self.thin_overcommit < 1.0:
            raise ConfigError("--thin-overcommit must be at least 1.0")
        if self.metrics_address and not re.fullmatch(r"[^:]*:\d{1,5}", self.metrics_address):
            raise ConfigError(
                f"--metrics-address {self.metrics_address!r} must look like :9810 or 0.0.0.0:9810"
            )
        if self.expansion not in ("controller", "node"):
            raise ConfigError("--expansion must be 'controller' or 'node'")
        if self.max_volumes_per_node < 0:
            raise ConfigError("--max-volumes-per-node must be >= 0 (0: no limit)")
        return self


def parse_size(text: str) -> int:
    """'10Gi', '512Mi', '1G', '4096' -> bytes. Raises ConfigError."""
    units = {
        "": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
        "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
    }
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not match:
        raise ConfigError(f"{text!r} is not a size (examples: 1Gi, 512Mi, 4096)")
    return int(match.group(1)) * units[(match.group(2) or "").lower()]


def default_node_id() -> str:
    return os.environ.get("CSI_NODE_ID") or os.environ.get("KUBE_NODE_NAME") or socket.gethostname()

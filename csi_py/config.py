"""One frozen Config, built from flags and environment and validated once at start-up."""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass
from fractions import Fraction

from csi_py.domain.units import GiB, MiB
from csi_py.linux.filesystems import MIN_FS_BYTES, SUPPORTED

__all__ = ["MIN_FS_BYTES", "SUPPORTED_FILESYSTEMS", "Config", "ConfigError"]

DEFAULT_DRIVER_NAME = "loop.csi-py.io"
# Both from the filesystem table (csi_py.linux.filesystems), the one place they are defined.
SUPPORTED_FILESYSTEMS = SUPPORTED
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


# Kubernetes quantity syntax (k8s.io/apimachinery resource.Quantity), as kubectl and
# PVC specs write sizes: a decimal number, then a binary suffix, a decimal suffix or a
# decimal exponent. Suffixes are case-sensitive; "m" is milli, not mega.
_QUANTITY = re.compile(
    r"(?P<num>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<exp>[eE][+-]?\d{1,3})|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|u|n))?"
)
_MULTIPLIERS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_UNITS_HELP = ("Ki Mi Gi Ti Pi Ei (powers of 1024) or k M G T P E (powers of 1000),"
               " e.g. 1.5Gi, 512Mi, 10G, 4096")
# Far beyond any pool; keeps a hostile "9e999" from costing anything to evaluate.
_MAX_SIZE = 2**64


def parse_size(text: str) -> int:
    """A Kubernetes quantity ('1.5Gi', '512Mi', '10G', '1e9', '4096') -> bytes, rounded
    up to a whole byte. Raises ConfigError with the reason and examples."""
    value = text.strip()
    if value.startswith("-"):
        raise ConfigError(f"{text!r}: a size cannot be negative")
    match = _QUANTITY.fullmatch(value.removeprefix("+")) if len(value) <= 40 else None
    if not match:
        raise ConfigError(
            f"{text!r} is not a size; use a Kubernetes quantity: {_UNITS_HELP}"
            " (suffixes are case-sensitive)"
        )
    suffix = match.group("suffix") or ""
    if suffix in ("m", "u", "n"):
        raise ConfigError(
            f"{text!r}: {suffix!r} is a fraction (milli, micro, nano) in Kubernetes quantities;"
            " for megabytes write M (10^6 bytes) or Mi (2^20 bytes)"
        )
    number = Fraction(match.group("num"))
    if match.group("exp"):
        number *= Fraction(10) ** int(match.group("exp")[1:])
    size = number * _MULTIPLIERS[suffix]
    if size > _MAX_SIZE:
        raise ConfigError(f"{text!r} is larger than any pool could hold")
    return math.ceil(size)


def format_size(size: int) -> str:
    """Bytes -> a short binary quantity for people: '16Mi', '1.5Gi', '512'. Exact values
    keep no decimals; others show one (rounded)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _MULTIPLIERS[suffix]
        if size >= unit:
            if size % unit == 0:
                return f"{size // unit}{suffix}"
            return f"{size / unit:.1f}{suffix}"
    return str(size)


DEFAULT_ENDPOINT = "unix:///run/csi-py/csi.sock"
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def default_endpoint() -> str:
    """$CSI_ENDPOINT (the name CSI drivers' manifests use), else the standard socket."""
    return os.environ.get("CSI_ENDPOINT") or DEFAULT_ENDPOINT


def endpoint_path(endpoint: str) -> str:
    """The absolute socket path an --endpoint names: 'unix:///run/csi.sock',
    'unix://relative.sock' or a plain path (relative ones are taken from the current
    directory). Raises ConfigError for another scheme (csi-py speaks only over unix
    sockets), an empty path or one too long for a unix socket."""
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme != "unix":
        raise ConfigError(
            f"--endpoint {endpoint!r}: csi-py serves CSI only on a unix socket; {scheme}://"
            " is not supported (example: unix:///run/csi-py/csi.sock)"
        )
    path = rest if sep else endpoint.removeprefix("unix:")
    if not path.strip():
        raise ConfigError(f"--endpoint {endpoint!r} names no socket path"
                          " (example: unix:///run/csi-py/csi.sock)")
    path = os.path.abspath(path)
    if len(path.encode()) > _MAX_SOCKET_PATH:
        raise ConfigError(f"--endpoint: the socket path {path!r} is longer than the"
                          f" {_MAX_SOCKET_PATH} bytes a unix socket allows")
    return path


def default_node_id() -> str:
    return os.environ.get("CSI_NODE_ID") or os.environ.get("KUBE_NODE_NAME") or socket.gethostname()

"""csi-py: a CSI driver that serves loop-device-backed volumes with real filesystems."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("csipy-loop")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

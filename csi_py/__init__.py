"""csi-py: a CSI driver that serves loop-device-backed volumes with real filesystems."""

# Written here rather than read with importlib.metadata, which costs start-up ~30 ms;
# tests/unit/test_version.py checks it against pyproject.toml.
__version__ = "0.1.0"

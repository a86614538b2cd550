"""Re-export shim: the frozen dataclasses moved to csi_py.domain.model and the units to
csi_py.domain.units. Kept only so tests and benchmarks importing the old path keep
working; csi_py/ itself imports the domain (tests/unit/test_import_graph.py forbids the
old path there)."""

from csi_py.domain.model import *  # noqa: F403
from csi_py.domain.units import GiB, KiB, MiB  # noqa: F401

"""Re-export shim: the snapshot id forms moved to csi_py.domain.snapshot_ids. Kept only so tests and
benchmarks importing the old path keep working; csi_py/ itself imports the domain
(tests/unit/test_import_graph.py forbids the old path there)."""

from csi_py.domain.snapshot_ids import *  # noqa: F403

"""hack/node-init drops the node namespace's copies of other loop-backed mounts, and only
those: never a shared mount (its unmount would propagate back to the machine), never "/",
never a mount holding one of the cluster's own directories."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _node_init():  # type: ignore[no-untyped-def]
    loader = importlib.machinery.SourceFileLoader("node_init", str(REPO / "hack" / "node-init"))
    spec = importlib.util.spec_from_loader("node_init", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


MOUNTINFO = "\n".join([
    "21 1 254:1 / / rw,relatime - ext4 /dev/loop9 rw",
    "30 21 7:0 / /work/tmp/t-1/staging rw,nosuid - ext4 /dev/loop0 rw",
    "31 30 7:0 / /work/tmp/t-1/staging/target rw,nosuid - ext4 /dev/loop0 rw",
    "32 21 7:1 / /work/tmp/with\\040space rw - xfs /dev/loop1 rw",
    "33 21 7:2 / /var/lib/kubelet/plugins/x/globalmount rw shared:5 - ext4 /dev/loop2 rw",
    "34 21 7:3 / /mnt/slave rw master:7 - ext4 /dev/loop3 rw",
    "35 21 7:4 / /var/lib/csi-py-cluster rw - ext4 /dev/loop4 rw",
    "36 21 0:40 / /work/tmp/t-1/tmpfs rw - tmpfs tmpfs rw",
    "37 21 0:6 /loop5 /work/tmp/t-1/blockdev rw - devtmpfs udev rw",
])


def test_only_private_foreign_loop_mounts_are_dropped_deepest_first():
    found = _node_init().foreign_loop_mounts(MOUNTINFO, ["/var/lib/csi-py-cluster/etcd",
                                                         "/var/lib/kubelet"])
    # The mount below another goes first.
    assert found == ["/work/tmp/t-1/staging/target", "/work/tmp/t-1/staging",
                     "/work/tmp/with space"]


def test_nothing_is_dropped_from_a_table_without_loop_mounts():
    assert _node_init().foreign_loop_mounts("22 1 0:21 / /proc rw - proc proc rw", []) == []

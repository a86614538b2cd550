"""Named points between the steps of every mutating operation, where the crash-safety
tests kill the driver (SIGKILL) to prove that a restart and a retry leave nothing lost
or leaked.

Inert unless the environment variable CSI_PY_CRASH_POINT names a point when the process
starts: only the crash-point test harness sets it, never a deployment. Checking an
unarmed point costs one string comparison.
"""

from __future__ import annotations

import os

from csi_py.linux.process import kill_self

ENV = "CSI_PY_CRASH_POINT"

# Every point, by operation and step. The harness kills at each one in turn; a point
# used in the code but missing here fails the unit test that checks the list.
POINTS: tuple[str, ...] = (
    "create.recorded", "create.image_written", "create.committed",
    "restore.recorded", "restore.filled", "restore.committed",
    "delete.marked", "delete.file_removed",
    "attach.recorded", "detach.removed",
    "stage.recorded", "stage.attached", "stage.formatted", "stage.mounted", "stage.committed",
    "unstage.unmounted", "unstage.detached",
    "publish.target_made", "publish.bound",
    "unpublish.unmounted",
    "expand.file_grown", "expand.device_refreshed", "expand.committed",
    "node_expand.refreshed", "node_expand.grown",
    "snapshot.recorded", "snapshot.frozen", "snapshot.captured", "snapshot.committed",
    "snapshot_delete.marked", "snapshot_delete.file_removed",
    "group.recorded", "group.captured", "group.committed",
)

_ARMED = os.environ.get(ENV, "")


def crash_point(name: str) -> None:
    """Die at once (SIGKILL, no cleanup) if this point is the armed one."""
    if _ARMED and name == _ARMED:
        kill_self()

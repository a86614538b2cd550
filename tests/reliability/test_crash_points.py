"""Kill -9 at every crash point, restart, retry, finish the volume's life: nothing lost,
nothing leaked.

For each point in csi_py.core.crashpoints.POINTS the driver runs in its own process with
that point armed (CSI_PY_CRASH_POINT), and a scenario drives the calls kubelet and the
sidecars make until the driver SIGKILLs itself. The driver is started again, unarmed;
the interrupted call is retried with the same arguments (as kubelet and the sidecars
do), and the scenario carries on to the end of every volume's life. Then:

- the data written before the crash is still there (sha256), in the volume and in the
  snapshots, restores and clones made from it;
- every filesystem stages (mounts) again cleanly and passes a forced e2fsck;
- the catalog, the pool directory, loop devices and mounts agree, and nothing is left:
  no volume, snapshot, file, loop device or mount.

Each point runs with an ext4 volume; the points a raw block volume also passes through
run with a block volume too.
"""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py.core.crashpoints import POINTS
from csi_py.linux import real_host
from tests.conftest import needs_root
from tests.lifecycle import MiB, Volumes
from tests.reliability.harness import (
    EXERCISED,
    KILLED,
    DriverProcess,
    disagreements,
    fsck_clean,
    payload,
    read_digest,
    write_data,
)

pytestmark = [pytest.mark.integration, needs_root()]

SIZES = {"ext4": 32 * MiB, "block": 32 * MiB, "xfs": 300 * MiB}  # xfsprogs' minimum
GROW_BY = 16 * MiB
DATA = 1 * MiB
# Growing a mounted ext4 needs CAP_SYS_RESOURCE; without it NodeExpandVolume answers
# FAILED_PRECONDITION and the next stage grows the filesystem instead. The points
# inside an online grow therefore run with xfs, which grows online without it.
EXT4_ONLINE_GROW = real_host().fs.can_grow_online("ext4")


class Scenario:
    """One run: the steps of a scenario, each a method; state lives on the instance
    and is only set once a call succeeded, so a retry sends the same request."""

    STEPS: tuple[str, ...] = ()

    def __init__(self, driver: DriverProcess, workdir: str, kind: str) -> None:
        self.d = driver
        self.w = workdir
        self.kind = kind
        self.ids: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.size = SIZES[kind]
        self.grown = self.size + GROW_BY

    @property
    def v(self) -> Volumes:
        return Volumes(self.d.client)

    def path(self, name: str) -> str:
        return os.path.join(self.w, name)

    def image(self, key: str) -> str:
        return os.path.join(self.d.pool, "volumes", self.ids[key] + ".img")

    # --- shared steps (volume "a", published at target "t1") ---------------------------

    def create_a(self) -> None:
        self.ids["a"] = self.v.create("crash-a", self.kind, self.size).volume_id

    def attach_a(self) -> None:
        self.v.attach(self.ids["a"], self.kind)

    def stage_a(self) -> None:
        self.v.stage(self.ids["a"], self.kind, self.path("stage-a"))

    def publish_a(self) -> None:
        self.v.publish(self.ids["a"], self.kind, self.path("stage-a"), self.path("t1"))

    def write_a(self) -> None:
        self.digests["a"] = write_data(self.path("t1"), self.kind, payload("first"))
        if self.kind != "block":
            st = os.statvfs(self.path("t1"))
            self.fs_bytes = st.f_blocks * st.f_frsize

    def check_a(self) -> None:
        got = read_digest(self.path("t1"), self.kind, DATA)
        assert got == self.digests["a"], "volume a lost the data written before the crash"

    def unpublish_a(self) -> None:
        self.v.unpublish(self.ids["a"], self.path("t1"))

    def unstage_a(self) -> None:
        self.v.unstage(self.ids["a"], self.path("stage-a"))

    def detach_a(self) -> None:
        self.v.detach(self.ids["a"])

    def delete_a(self) -> None:
        self.v.delete(self.ids["a"])

    def fsck(self, key: str) -> None:
        if self.kind != "block":
            ok, out = fsck_clean(self.image(key), self.kind)
            assert ok, f"volume {key} does not pass a filesystem check:\n{out}"

    def fsck_a(self) -> None:
        self.fsck("a")

    def check_copy(self, key: str, digest: str) -> None:
        """Stage and publish a volume, check its data, take it down again."""
        vid, staging, target = self.ids[key], self.path(f"stage-{key}"), self.path(f"t-{key}")
        self.v.stage(vid, self.kind, staging)
        self.v.publish(vid, self.kind, staging, target)
        try:
            assert read_digest(target, self.kind, DATA) == digest, f"volume {key}: wrong data"
        finally:
            self.v.unpublish(vid, target)
            self.v.unstage(vid, staging)
        self.fsck(key)


class LifeScenario(Scenario):
    """create, attach, stage, publish, write, expand (controller and node), unpublish,
    unstage, stage and publish again elsewhere and check the data, take it all down."""

    online_grown = False
    restaged = False
    STEPS = (
        "create_a", "attach_a", "stage_a", "publish_a", "write_a", "expand_a",
        "node_expand_a", "check_a", "check_size", "unpublish_a", "unstage_a",
        "restage", "stage_a", "publish_a", "check_a", "check_size", "unpublish_a", "unstage_a",
        "fsck_a", "detach_a", "delete_a",
    )

    def expand_a(self) -> None:
        response = self.v.expand(self.ids["a"], self.kind, self.grown)
        assert response.capacity_bytes == self.grown
        assert response.node_expansion_required == (self.kind != "block")

    def node_expand_a(self) -> None:
        try:
            self.v.node_expand(self.ids["a"], self.kind, self.path("t1"),
                               self.path("stage-a"), self.grown)
            self.online_grown = True
        except grpc.RpcError as exc:
            if self.kind != "ext4" or EXT4_ONLINE_GROW or \
                    exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            assert "CAP_SYS_RESOURCE" in (exc.details() or "")
            self.online_grown = False  # the next stage grows it

    def check_size(self) -> None:
        target = self.path("t1")
        if self.kind == "block":
            fd = os.open(target, os.O_RDONLY)
            try:
                assert os.lseek(fd, 0, os.SEEK_END) == self.grown
            finally:
                os.close(fd)
        else:
            st = os.statvfs(target)
            if self.online_grown or self.restaged:
                assert st.f_blocks * st.f_frsize >= self.fs_bytes + GROW_BY // 2, \
                    "the filesystem was not grown"

    def restage(self) -> None:
        self.restaged = True


class SnapshotScenario(Scenario):
    """Snapshot a published volume, change it, restore the snapshot, clone the volume,
    cut a group snapshot, check every copy holds the right data, delete everything."""

    STEPS = (
        "create_a", "attach_a", "stage_a", "publish_a", "write_a", "snapshot_s", "write_a2",
        "restore_b", "clone_c", "group_g", "check_a2", "check_b", "check_c",
        "delete_snapshot_s", "delete_group_g", "unpublish_a", "unstage_a", "fsck_a",
        "detach_a", "delete_a", "delete_b", "delete_c",
    )

    def snapshot_s(self) -> None:
        snap = self.v.snapshot(self.ids["a"], "crash-s")
        assert snap.ready_to_use
        self.ids["s"] = snap.snapshot_id

    def write_a2(self) -> None:
        self.digests["a2"] = write_data(self.path("t1"), self.kind, payload("second"))

    def check_a2(self) -> None:
        assert read_digest(self.path("t1"), self.kind, DATA) == self.digests["a2"]

    def restore_b(self) -> None:
        self.ids["b"] = self.v.create("crash-b", self.kind, snapshot_id=self.ids["s"]).volume_id

    def clone_c(self) -> None:
        self.ids["c"] = self.v.create("crash-c", self.kind, volume_id=self.ids["a"]).volume_id

    def group_g(self) -> None:
        group = self.v.group_snapshot("crash-g", [self.ids["a"], self.ids["b"]])
        assert group.ready_to_use and len(group.snapshots) == 2
        self.ids["g"] = group.group_snapshot_id
        self.ids["g-members"] = ",".join(s.snapshot_id for s in group.snapshots)

    def check_b(self) -> None:
        self.check_copy("b", self.digests["a"])  # the snapshot was cut before write_a2

    def check_c(self) -> None:
        self.check_copy("c", self.digests["a2"])

    def delete_snapshot_s(self) -> None:
        self.v.delete_snapshot(self.ids["s"])

    def delete_group_g(self) -> None:
        self.v.delete_group(self.ids["g"], self.ids["g-members"].split(","))

    def delete_b(self) -> None:
        self.v.delete(self.ids["b"])

    def delete_c(self) -> None:
        self.v.delete(self.ids["c"])


SCENARIO_OF = {
    **{p: LifeScenario for p in POINTS},
    **{p: SnapshotScenario for p in POINTS
       if p.split(".")[0] in ("snapshot", "snapshot_delete", "restore", "group")},
}
# Points a raw block volume never passes: there is no filesystem to make, mount or grow.
NOT_FOR_BLOCK = {"stage.formatted", "stage.mounted", "node_expand.grown"}
FS_KIND = {p: "xfs" if p.startswith("node_expand.") else "ext4" for p in POINTS}
CASES = [pytest.param(p, FS_KIND[p], id=f"{FS_KIND[p]}-{p}") for p in POINTS] + [
    pytest.param(p, "block", id=f"block-{p}") for p in POINTS if p not in NOT_FOR_BLOCK
]


RECONCILED = ("rolled_back_creates", "finished_creates", "finished_deletes",
              "rolled_back_snapshots")


def expected_reconcile(point: str) -> dict[str, int]:
    """What start-up reconciliation must undo or finish after a kill at `point`: a
    create before its commit point (its record) is rolled back, one after it (its
    image and record written, the catalog not yet told) is finished, a marked delete
    is finished, an uncommitted snapshot (or group) and a marked snapshot delete are
    removed; nothing else."""
    counts = dict.fromkeys(RECONCILED, 0)
    if point in ("create.recorded", "restore.recorded"):
        counts["rolled_back_creates"] = 1
    elif point in ("create.image_written", "restore.filled"):
        counts["finished_creates"] = 1
    elif point in ("delete.marked", "delete.file_removed"):
        counts["finished_deletes"] = 1
    elif point in ("snapshot.recorded", "snapshot.frozen", "snapshot.captured",
                   "snapshot_delete.marked", "snapshot_delete.file_removed",
                   "group.recorded", "group.captured"):
        counts["rolled_back_snapshots"] = 1
    return counts


def run_with_crash(scenario: Scenario, point: str) -> str:
    """Run every step; the armed driver dies at `point` during one of them. Restart it
    unarmed, retry that step, go on. Returns the step that was interrupted."""
    d = scenario.d
    d.start(crash_point=point)
    interrupted = ""
    for step in scenario.STEPS:
        try:
            getattr(scenario, step)()
            continue
        except grpc.RpcError as exc:
            # A dying process closes its socket before it can be reaped: wait for it.
            if interrupted or exc.code() != grpc.StatusCode.UNAVAILABLE or \
                    d.wait_killed(timeout=15) is None:
                raise
            code = d.wait_killed(timeout=0)
            assert code == KILLED, f"driver died with {code}, not SIGKILL:\n{d.log()}"
            interrupted = step
        d.stop()
        d.start()  # unarmed
        summary = d.reconcile_summary()
        assert summary["errors"] == 0, d.log()
        assert summary["unknown_images"] == 0, d.log()
        assert summary["left_alone"] == summary["conflicts"] == 0, d.log()
        assert summary["unreadable_records"] == summary["stale_records"] == 0, d.log()
        undone = {k: summary[k] for k in RECONCILED}
        assert undone == expected_reconcile(point), d.log()
        # Catalog and pool agree as soon as reconciliation is done; a node call may be
        # half done until its retry, so stagings are compared at the end.
        assert disagreements(d.workdir, d.pool, node=False) == []
        getattr(scenario, step)()  # the retry, with the same arguments
        assert disagreements(d.workdir, d.pool) == []  # now the node agrees too
    return interrupted


@pytest.mark.parametrize(("point", "kind"), CASES)
def test_crash_point_then_restart_and_retry_loses_and_leaks_nothing(
    driver_process: DriverProcess, workdir: str, point: str, kind: str
) -> None:
    scenario = SCENARIO_OF[point](driver_process, workdir, kind)
    interrupted = run_with_crash(scenario, point)
    assert interrupted, f"no step of {type(scenario).__name__} reached crash point {point}"
    assert disagreements(workdir, driver_process.pool, expect_empty=True) == []
    driver_process.stop()
    assert disagreements(workdir, driver_process.pool, expect_empty=True) == []
    targets = [p for p in os.listdir(workdir) if p.startswith("t")]
    assert targets == [], f"publish targets left behind: {targets}"
    EXERCISED.add(point)


def test_zz_every_crash_point_was_exercised(request: pytest.FixtureRequest) -> None:
    """Runs after the parametrized tests above (file order): all of POINTS were hit."""
    name = test_crash_point_then_restart_and_retry_loses_and_leaks_nothing.__name__
    ran = {item.callspec.params["point"] for item in request.session.items
           if item.originalname == name}
    if ran != set(POINTS):
        pytest.skip("only some crash points were selected")
    print(f"crash points exercised: {len(EXERCISED)} of {len(POINTS)}")
    assert EXERCISED == set(POINTS), sorted(set(POINTS) - EXERCISED)

"""The local cluster's snapshot support (hack/cluster, tests/e2e/cluster/snapshot-controller.yaml)
against facts of the pinned external-snapshotter release, so that it is checked offline:
the controller may do all the release's own RBAC lets it do (group snapshots included),
nothing turns group snapshots off, and hack/cluster installs the group snapshot CRDs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONTROLLER = REPO / "tests" / "e2e" / "cluster" / "snapshot-controller.yaml"
CLUSTER = REPO / "hack" / "cluster"

VERSION = "v8.7.0"
# The ClusterRole of external-snapshotter v8.7.0's
# deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml (Go module
# github.com/kubernetes-csi/external-snapshotter/v8@v8.7.0), as (group, resource) -> verbs.
# Since v8.2 the controller, not the sidecar, makes the member VolumeSnapshots and
# VolumeSnapshotContents of a dynamic VolumeGroupSnapshot
# (pkg/common-controller/groupsnapshot_controller_helper.go): hence create on both.
UPSTREAM_RULES = {
    ("", "persistentvolumes"): {"get", "list", "watch"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"):
        {"create", "get", "list", "watch", "update", "delete", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"patch"},
    ("snapshot.storage.k8s.io", "volumesnapshots"):
        {"create", "get", "list", "watch", "update", "patch", "delete"},
    ("snapshot.storage.k8s.io", "volumesnapshots/status"): {"update", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses"): {"get", "list", "watch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents"):
        {"create", "get", "list", "watch", "update", "delete", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status"): {"patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshots"):
        {"get", "list", "watch", "update", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshots/status"): {"update", "patch"},
    # --enable-distributed-snapshotting (a commented-out rule upstream; set here).
    ("", "nodes"): {"get", "list", "watch"},
}
# client/config/crd of github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0.
CRD_FILES = [
    "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
    "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
    "snapshot.storage.k8s.io_volumesnapshots.yaml",
    "groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml",
    "groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml",
    "groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml",
]


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(CONTROLLER.read_text()) if d]


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]}


def test_controller_role_grants_what_the_release_grants() -> None:
    role = next(d for d in _docs() if d["kind"] == "ClusterRole")
    granted = _granted(role)
    missing = sorted((g, r, v) for (g, r), verbs in UPSTREAM_RULES.items() for v in verbs
                     if (g, r, v) not in granted)
    assert not missing, f"snapshot-controller's ClusterRole lacks {missing}"
    binding = next(d for d in _docs() if d["kind"] == "ClusterRoleBinding")
    account = next(d for d in _docs() if d["kind"] == "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"]} in binding["subjects"]


def test_controller_is_the_pinned_release_with_group_snapshots_on() -> None:
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f"/snapshot-controller:{VERSION}")
    assert f"SNAPSHOTTER_VERSION={VERSION}\n" in CLUSTER.read_text()
    # The gate is GA and on by default at this version: nothing may turn it off.
    gates = [a for a in container["args"] if a.startswith("--feature-gates")]
    assert not any("CSIVolumeGroupSnapshot=false" in g for g in gates), gates


def _install_function() -> str:
    text = CLUSTER.read_text()
    match = re.search(r"^install_snapshot_support\(\) \{\n(.*?)^\}\n", text, re.S | re.M)
    assert match, "hack/cluster has no install_snapshot_support"
    return match.group(1)


def test_cluster_applies_every_crd_of_the_release_and_waits_for_them() -> None:
    body = _install_function()
    globs = re.findall(r'"\$dir"/config/crd/(\S+); do', body)
    assert len(globs) == 1, body
    pattern = re.compile(re.escape(globs[0]).replace(r"\*", "[^/]*") + "$")
    assert [f for f in CRD_FILES if not pattern.match(f)] == []
    # Each group snapshot CRD is required by name, and all are Established before the
    # controller starts (it turns group snapshots off for its run when they are not).
    listed = re.search(r"^GROUP_SNAPSHOT_CRDS=\((.*)\)$", CLUSTER.read_text(), re.M)
    assert listed
    assert sorted(listed.group(1).split()) == sorted(
        f.split("_", 1)[1].removesuffix(".yaml") for f in CRD_FILES if f.startswith("group"))
    wait = body.index("--for=condition=Established")
    assert wait < body.index("kubectl apply -f tests/e2e/cluster/snapshot-controller.yaml")

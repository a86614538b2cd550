"""End to end, beyond the examples: every filesystem, ReadWriteOncePod, CSIStorageCapacity,
the driver's metrics, a restart of the node plugin and a simulated node reboot. Each test
runs in its own namespace.

Tests marked `once` exercise the cluster rather than a layout's sidecars; hack/e2e runs them
in its first pass only. The node reboot needs hack/cluster's local cluster (it drives the
node's processes), and so do the metrics and capacity checks that read the host."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from csi_py.domain.units import GiB
from tests.e2e.cluster import DRIVER, DRIVER_NAMESPACE, REPO, Cluster

LOCAL_CLUSTER = os.environ.get("CSI_PY_E2E_LAYOUT") is not None


def _pvc(name: str, storage_class: str, size: str, *, mode: str = "ReadWriteOnce",
         block: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"storageClassName": storage_class, "accessModes": [mode],
                            "resources": {"requests": {"storage": size}}}
    if block:
        spec["volumeMode"] = "Block"
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name}, "spec": spec}


def _pod(name: str, claim: str, script: str) -> dict[str, Any]:
    """A busybox pod with `claim` at /data that runs `script`, then becomes Ready."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": "busybox:1.37.0", "command": ["sh", "-c"],
                "args": [f"set -eu\n{script}\ntouch /tmp/ready\nwhile true; do sleep 3600; done"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                   "periodSeconds": 2},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def _storage_class(name: str, fs_type: str) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "csi-py-e2e"}},
            "provisioner": DRIVER, "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True,
            "parameters": {"csi.storage.k8s.io/fstype": fs_type}}


def _mount_line(cluster: Cluster, pod: str, path: str) -> list[str]:
    """The pod's /proc/mounts line for `path`, split: device, path, type, options."""
    mounts = cluster.exec(pod, ["cat", "/proc/mounts"])
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == path:
            return fields
    raise AssertionError(f"{path} is not a mount point in pod {pod}:\n{mounts}")


def _driver_pod(cluster: Cluster) -> Any:
    pods = cluster.core.list_namespaced_pod(
        DRIVER_NAMESPACE, label_selector="app.kubernetes.io/component=node").items
    running = [p for p in pods if p.status.phase == "Running"
               and not p.metadata.deletion_timestamp]
    if not running:
        pytest.fail(f"no running csi-py node plugin pod in namespace {DRIVER_NAMESPACE}")
    return running[0]


def _driver_ready(cluster: Cluster, not_uid: str | None = None) -> Any:
    """Wait for a node plugin pod (other than `not_uid`) with every container ready."""
    def ready():
        for pod in cluster.core.list_namespaced_pod(
                DRIVER_NAMESPACE, label_selector="app.kubernetes.io/component=node").items:
            statuses = pod.status.container_statuses or []
            if (pod.metadata.uid != not_uid and pod.status.phase == "Running"
                    and not pod.metadata.deletion_timestamp and statuses
                    and all(s.ready for s in statuses)):
                return pod
        return None
    return cluster.wait("the csi-py node plugin Running with every container ready", ready)


@pytest.mark.once
@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs"])
def test_dynamic_provisioning_per_filesystem(cluster: Cluster, fs_type: str) -> None:
    sc_name = f"csi-py-e2e-{fs_type}-{cluster.namespace}"
    cluster.create(_storage_class(sc_name, fs_type))
    try:
        cluster.create(_pvc("data", sc_name, "512Mi"))
        cluster.create(_pod("app", "data", f"echo {fs_type}-data > /data/file; sync"))
        cluster.pod_ready("app")
        assert cluster.pvc_bound("data")
        device, _, mounted_type, options = _mount_line(cluster, "app", "/data")[:4]
        assert mounted_type == fs_type, f"/data is {mounted_type}, not {fs_type}"
        assert device.startswith("/dev/loop"), f"/data is mounted from {device}"
        assert "rw" in options.split(",")
        assert cluster.exec("app", ["cat", "/data/file"]).strip() == f"{fs_type}-data"
    finally:
        cluster.core.delete_namespaced_pod("app", cluster.namespace, grace_period_seconds=0)
        cluster.core.delete_namespaced_persistent_volume_claim("data", cluster.namespace)
        cluster.wait("the PVC's PV to be deleted", lambda: not [
            pv for pv in cluster.core.list_persistent_volume().items
            if pv.spec.claim_ref and pv.spec.claim_ref.namespace == cluster.namespace])
        cluster.storage.delete_storage_class(sc_name)


@pytest.mark.once
def test_read_write_once_pod_refuses_a_second_pod(cluster: Cluster) -> None:
    cluster.create(_pvc("only-one", "csi-py", "256Mi", mode="ReadWriteOncePod"))
    cluster.create(_pod("first", "only-one", "echo first > /data/owner"))
    cluster.pod_ready("first")
    cluster.create(_pod("second", "only-one", "echo second > /data/owner"))

    def refused():
        pod = cluster.core.read_namespaced_pod("second", cluster.namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and "ReadWriteOncePod" in (
                    c.message or ""):
                return c.message
        return None

    message = cluster.wait("the scheduler to refuse the second pod", refused)
    assert "ReadWriteOncePod" in message
    assert cluster.exec("first", ["cat", "/data/owner"]).strip() == "first"
    # Once the first pod is gone, the second one gets the volume.
    cluster.core.delete_namespaced_pod("first", cluster.namespace, grace_period_seconds=0)
    cluster.pod_ready("second")
    assert cluster.exec("second", ["cat", "/data/owner"]).strip() == "second"


@pytest.mark.once
@pytest.mark.skipif(not LOCAL_CLUSTER, reason="needs hack/cluster's local cluster (hack/e2e)")
def test_the_local_cluster_never_pulls_an_image(cluster: Cluster) -> None:
    # hack/cluster points every registry containerd knows at a closed loopback port; a
    # hosts.toml that containerd rejects ("invalid host tree") made it pull from the
    # real registry instead, off the machine.
    cluster.create({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-pull"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "app", "image": "registry.k8s.io/csi-py-e2e/no-such-image:1"}]},
    })

    def refused() -> str | None:
        events = cluster.core.list_namespaced_event(
            cluster.namespace, field_selector="involvedObject.name=no-pull").items
        for e in events:
            if e.reason == "Failed" and "no-such-image" in (e.message or ""):
                return e.message
        return None

    message = cluster.wait("kubelet to fail the pull", refused)
    assert "127.0.0.1:9" in message and "connection refused" in message, message


def _capacity(cluster: Cluster, storage_class: str) -> int:
    """The CSIStorageCapacity the provisioner publishes for `storage_class` (bytes)."""
    from tests.e2e.test_examples import _quantity

    items = cluster.storage.list_namespaced_csi_storage_capacity(DRIVER_NAMESPACE).items
    values = [_quantity(str(c.capacity)) for c in items
              if c.storage_class_name == storage_class and c.capacity is not None]
    assert len(values) == 1, f"expected one CSIStorageCapacity for {storage_class}: {items}"
    return values[0]


@pytest.mark.usefixtures("settled")
@pytest.mark.once
def test_storage_capacity_follows_the_pool(cluster: Cluster) -> None:
    # Thin volumes (StorageClass csi-py) promise space: the capacity offered is the pool's
    # limit less what the catalog has promised, so a 2Gi volume takes exactly 2Gi off it.
    cluster.wait("no PV left over from earlier tests", lambda: not [
        pv for pv in cluster.core.list_persistent_volume().items
        if pv.spec.csi and pv.spec.csi.driver == DRIVER])
    before = cluster.wait("a CSIStorageCapacity for csi-py",
                          lambda: _capacity(cluster, "csi-py") or None)
    cluster.create(_pvc("big", "csi-py", "2Gi"))
    cluster.create(_pod("app", "big", "true"))
    cluster.pod_ready("app")
    cluster.wait(f"capacity {before} - 2Gi",
                 lambda: _capacity(cluster, "csi-py") == before - 2 * GiB)
    cluster.core.delete_namespaced_pod("app", cluster.namespace, grace_period_seconds=0)
    cluster.core.delete_namespaced_persistent_volume_claim("big", cluster.namespace)
    cluster.wait(f"capacity back to {before}", lambda: _capacity(cluster, "csi-py") == before)


@pytest.mark.once
def test_driver_metrics(cluster: Cluster) -> None:
    cluster.create(_pvc("data", "csi-py", "256Mi"))
    cluster.create(_pod("app", "data", "true"))
    cluster.pod_ready("app")
    pod = _driver_pod(cluster)
    # Through the API server, as a user without node access would: the pod proxy.
    proxied = subprocess.run(
        [os.path.join(os.environ.get("CSI_PY_CLUSTER_STATE", "/var/lib/csi-py-cluster"),
                      "bin", "kubectl"), "get", "--raw",
         f"/api/v1/namespaces/{DRIVER_NAMESPACE}/pods/{pod.metadata.name}:9810/proxy/metrics"],
        capture_output=True, text=True, timeout=60)
    if pod.status.pod_ip and pod.status.pod_ip.startswith("127."):
        # The local cluster's node address is loopback, and the API server never proxies
        # to loopback: it must refuse plainly. The node plugin (hostNetwork) serves
        # metrics on the node's 127.0.0.1:9810, read there instead.
        assert proxied.returncode != 0 and "address not allowed" in proxied.stderr, proxied
        with urllib.request.urlopen("http://127.0.0.1:9810/metrics", timeout=30) as reply:
            text = reply.read().decode()
    else:
        assert proxied.returncode == 0, proxied.stderr
        text = proxied.stdout
    assert re.search(r"^csi_py_ready(\{[^}]*\})? 1(\.0)?$", text, re.M), text[:2000]
    volumes = re.search(r"^csi_py_volumes(\{[^}]*\})? (\d+)", text, re.M)
    assert volumes and int(volumes.group(2)) >= 1, text[:2000]
    assert re.search(r'^csi_py_rpc_requests_total\{[^}]*method="[^"]*NodePublishVolume"', text,
                     re.M), "NodePublishVolume calls are counted"


@pytest.mark.usefixtures("settled")
@pytest.mark.once
def test_statefulset_survives_a_node_plugin_restart(cluster: Cluster) -> None:
    cluster.apply_example("statefulset.yaml")
    cluster.statefulset_ready("csi-py-web", 3)
    old = _driver_pod(cluster)
    cluster.core.delete_namespaced_pod(old.metadata.name, DRIVER_NAMESPACE)
    _driver_ready(cluster, not_uid=old.metadata.uid)
    # The mounted volumes outlived the driver; a replaced replica is staged and published
    # by the new driver process and finds its data.
    for i in range(3):
        out = cluster.exec(f"csi-py-web-{i}", ["sh", "-c", "cd /data && head -n 1 marker &&"
                                              " sha256sum -c -s marker.sha256 && echo SUM-OK"])
        assert f"csi-py-web-{i}" in out and "SUM-OK" in out, out
    first = cluster.core.read_namespaced_pod("csi-py-web-0", cluster.namespace)
    cluster.core.delete_namespaced_pod("csi-py-web-0", cluster.namespace,
                                       grace_period_seconds=1)
    cluster.wait("a new csi-py-web-0 pod", lambda: (
        pod := cluster.core.read_namespaced_pod("csi-py-web-0", cluster.namespace)
    ).metadata.uid != first.metadata.uid and pod)
    cluster.pod_ready("csi-py-web-0")
    assert "VERIFIED csi-py-web-0 boot=2" in cluster.logs("csi-py-web-0")


@pytest.mark.usefixtures("settled")
@pytest.mark.once
@pytest.mark.skipif(not LOCAL_CLUSTER, reason="needs hack/cluster's local cluster (hack/e2e)")
def test_node_reboot_brings_every_volume_back(cluster: Cluster) -> None:
    cluster.apply_example("statefulset.yaml")
    cluster.create(_pvc("block", "csi-py", "64Mi", block=True))
    block_pod = _pod("block", "block", "true")
    block_pod["spec"]["containers"][0]["volumeMounts"] = []
    block_pod["spec"]["containers"][0]["volumeDevices"] = [{"name": "data",
                                                            "devicePath": "/dev/xvda"}]
    block_pod["spec"]["containers"][0]["args"] = [
        "set -eu\necho block-data-$HOSTNAME | dd of=/dev/xvda conv=fsync 2>/dev/null\n"
        "touch /tmp/ready\nwhile true; do sleep 3600; done"]
    cluster.create(block_pod)
    cluster.statefulset_ready("csi-py-web", 3)
    cluster.pod_ready("block")
    rebooted_at = datetime.now(UTC)
    # hack/cluster fails unless the node's processes, mounts and loop devices all went.
    result = subprocess.run([str(REPO / "hack" / "cluster"), "reboot-node"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node stopped: no process, mount or loop device of it left" in result.stdout
    _driver_ready(cluster)

    def restarted_and_ready():
        pods = cluster.core.list_namespaced_pod(cluster.namespace).items
        for p in pods:
            statuses = p.status.container_statuses or []
            running = statuses and statuses[0].state.running
            if not (running and running.started_at > rebooted_at and statuses[0].ready):
                return None
        return pods

    cluster.wait("every pod restarted after the reboot and Ready", restarted_and_ready)
    for i in range(3):
        assert f"VERIFIED csi-py-web-{i} boot=2" in cluster.logs(f"csi-py-web-{i}")
    out = cluster.exec("block", ["sh", "-c", "head -c 64 /dev/xvda"])
    assert "block-data-block" in out, out


GROUP_API = "groupsnapshot.storage.k8s.io/v1"


def _snapshotter_args(cluster: Cluster) -> list[str]:
    """The command-line arguments of the deployment's csi-snapshotter containers."""
    workloads = (cluster.apps.list_namespaced_daemon_set(DRIVER_NAMESPACE).items
                 + cluster.apps.list_namespaced_deployment(DRIVER_NAMESPACE).items)
    return [arg for w in workloads for c in w.spec.template.spec.containers
            if c.name == "csi-snapshotter" for arg in c.args or []]


def _group_members(cluster: Cluster, group: str) -> dict[str, str] | None:
    """PVC name -> name of the ready member VolumeSnapshot of VolumeGroupSnapshot `group`
    (snapshot-controller makes one per member, owned by the group), or None."""
    snaps = cluster.dynamic.resources.get(api_version="snapshot.storage.k8s.io/v1",
                                          kind="VolumeSnapshot")
    found = {}
    for snap in snaps.get(namespace=cluster.namespace).to_dict()["items"]:
        owners = snap["metadata"].get("ownerReferences") or []
        if (any(o["kind"] == "VolumeGroupSnapshot" and o["name"] == group for o in owners)
                and (snap.get("status") or {}).get("readyToUse") is True):
            found[snap["spec"]["source"]["persistentVolumeClaimName"]] = snap["metadata"]["name"]
    return found or None


def test_group_snapshot_and_restore(cluster: Cluster) -> None:
    """A VolumeGroupSnapshot of two labelled PVCs through Kubernetes (snapshot-controller
    and csi-snapshotter to csi-py's CreateVolumeGroupSnapshot): both members are captured
    at one point, and each restores to what it held then. (Kubernetes' own storage suite
    cannot check this at v1.34.4: docs/conformance.md.)"""
    from kubernetes.client.exceptions import ApiException

    if not cluster.crd_exists("volumegroupsnapshots.groupsnapshot.storage.k8s.io"):
        pytest.skip("the VolumeGroupSnapshot CRDs are not installed (hack/cluster and "
                    "hack/kind-demo install them)")
    if any(a in ("--node-deployment", "--node-deployment=true")
           for a in _snapshotter_args(cluster)):
        pytest.skip("csi-snapshotter runs with --node-deployment (the distributed layout), "
                    "which serves no group snapshot (docs/limitations.md)")
    class_name = f"csi-py-e2e-group-{cluster.namespace}"
    classes = cluster.dynamic.resources.get(api_version=GROUP_API,
                                            kind="VolumeGroupSnapshotClass")
    groups = cluster.dynamic.resources.get(api_version=GROUP_API, kind="VolumeGroupSnapshot")
    contents = cluster.dynamic.resources.get(api_version=GROUP_API,
                                             kind="VolumeGroupSnapshotContent")
    cluster.create({"apiVersion": GROUP_API, "kind": "VolumeGroupSnapshotClass",
                    "metadata": {"name": class_name,
                                 "labels": {"app.kubernetes.io/part-of": "csi-py-e2e"}},
                    "driver": DRIVER, "deletionPolicy": "Delete"})
    group_made = False
    try:
        for name in ("a", "b"):
            pvc = _pvc(name, "csi-py", "256Mi")
            pvc["metadata"]["labels"] = {"csi-py-e2e/group": "ab"}
            cluster.create(pvc)
        writer = _pod("writer", "a", "echo a-before > /data/f; echo b-before > /b/f; sync")
        writer["spec"]["containers"][0]["volumeMounts"].append({"name": "b", "mountPath": "/b"})
        writer["spec"]["volumes"].append({"name": "b", "persistentVolumeClaim": {"claimName": "b"}})
        cluster.create(writer)
        cluster.pod_ready("writer")
        cluster.create({"apiVersion": GROUP_API, "kind": "VolumeGroupSnapshot",
                        "metadata": {"name": "ab"},
                        "spec": {"volumeGroupSnapshotClassName": class_name,
                                 "source": {"selector": {
                                     "matchLabels": {"csi-py-e2e/group": "ab"}}}}})
        group_made = True

        def ready():
            status = groups.get(name="ab", namespace=cluster.namespace).to_dict().get(
                "status") or {}
            if status.get("error"):
                pytest.fail(f"group snapshot failed: {status['error']}\n{cluster.events()}",
                            pytrace=False)
            return status.get("readyToUse") is True and status

        status = cluster.wait("VolumeGroupSnapshot ab readyToUse", ready)
        content = contents.get(name=status["boundVolumeGroupSnapshotContentName"]).to_dict()
        assert content["spec"]["driver"] == DRIVER
        infos = content["status"]["volumeSnapshotInfoList"]
        assert len(infos) == 2 and all(i.get("snapshotHandle") for i in infos), content["status"]
        assert content["status"].get("volumeGroupSnapshotHandle"), content["status"]
        members = cluster.wait("the group's two member VolumeSnapshots readyToUse",
                               lambda: (m := _group_members(cluster, "ab")) and len(m) == 2
                               and m)
        assert set(members) == {"a", "b"}, members
        # Changed after the group snapshot: the restores must not see this.
        cluster.exec("writer", ["sh", "-c", "echo a-after > /data/f; echo b-after > /b/f; sync"])
        for name in ("a", "b"):
            restored = _pvc(f"{name}-restored", "csi-py", "256Mi")
            restored["spec"]["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io",
                                              "kind": "VolumeSnapshot", "name": members[name]}
            cluster.create(restored)
            cluster.create(_pod(f"{name}-reader", f"{name}-restored", "true"))
        for name in ("a", "b"):
            cluster.pod_ready(f"{name}-reader")
            assert cluster.exec(f"{name}-reader", ["cat", "/data/f"]).strip() == f"{name}-before"
    finally:
        # The group (with its members and content, deletionPolicy Delete) goes before its
        # class, which is cluster-wide and so outlives the test's namespace.
        if group_made:
            try:
                groups.delete(name="ab", namespace=cluster.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            cluster.wait("the group snapshot's content deleted", lambda: not [
                c for c in contents.get().to_dict()["items"]
                if c["spec"]["volumeGroupSnapshotRef"].get("namespace") == cluster.namespace])
        classes.delete(name=class_name)

"""End to end, on a real cluster with csi-py deployed (hack/kind-demo sets one up): apply
each example and wait for what a user waits for. Each test runs in its own namespace.

Skipped, with the reason, when no cluster is reachable through $KUBECONFIG or the driver
is not installed there."""

from __future__ import annotations

import re
import time

import pytest
import yaml

from csi_py.domain.units import GiB, MiB
from tests.e2e.cluster import DRIVER, DRIVER_NAMESPACE, EXAMPLES, TIMEOUT, Cluster


def _quantity(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, q
    return int(m.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[m.group(2)]


def _df_total_bytes(output: str) -> int:
    """Total size from `df -k PATH` output (last line, second column)."""
    fields = output.strip().splitlines()[-1].split()
    return int(fields[1]) * 1024


def test_pvc_and_pod(cluster: Cluster) -> None:
    cluster.apply_example("pvc-pod.yaml")
    cluster.pod_ready("csi-py-demo")
    pvc = cluster.pvc_bound("csi-py-demo")
    pv = cluster.core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.csi.driver == DRIVER
    pod = cluster.core.read_namespaced_pod("csi-py-demo", cluster.namespace)
    terms = pv.spec.node_affinity.required.node_selector_terms
    values = {v for t in terms for e in t.match_expressions
              if e.key == f"topology.{DRIVER}/node" for v in e.values}
    assert values == {pod.spec.node_name}, "the volume lives on the pod's node"
    out = cluster.exec("csi-py-demo", ["sh", "-c", "cat /data/hello.txt; df -k /data"])
    assert "hello from csi-py-demo" in out
    total = _df_total_bytes(out)
    assert 900 * MiB < total <= GiB, f"a 1Gi volume has a ~1Gi filesystem, df says {total}"
    # fsGroupPolicy File: the non-root pod (uid 1000, fsGroup 1000) could write.
    assert cluster.exec("csi-py-demo", ["id", "-u"]).strip() == "1000"


@pytest.mark.once
def test_statefulset_data_survives_pod_deletion(cluster: Cluster) -> None:
    cluster.apply_example("statefulset.yaml")
    cluster.statefulset_ready("csi-py-web", 3)
    for i in range(3):
        assert f"WROTE csi-py-web-{i} " in cluster.logs(f"csi-py-web-{i}")
    old = cluster.core.read_namespaced_pod("csi-py-web-1", cluster.namespace)
    cluster.core.delete_namespaced_pod("csi-py-web-1", cluster.namespace,
                                       grace_period_seconds=1)

    def replaced():
        pod = cluster.core.read_namespaced_pod("csi-py-web-1", cluster.namespace)
        return pod.metadata.uid != old.metadata.uid and pod

    cluster.wait("a new csi-py-web-1 pod", replaced)
    cluster.pod_ready("csi-py-web-1")
    log = cluster.logs("csi-py-web-1")
    assert "VERIFIED csi-py-web-1 boot=2" in log, log
    # The other replicas' volumes are untouched and still their own.
    for i in (0, 2):
        # The checksum file names the relative `marker`: check it from /data.
        out = cluster.exec(f"csi-py-web-{i}", ["sh", "-c",
                                              "cd /data && head -n 1 marker &&"
                                              " sha256sum -c -s marker.sha256 && echo SUM-OK"])
        assert f"csi-py-web-{i}" in out and "SUM-OK" in out, out


def test_raw_block_volume(cluster: Cluster) -> None:
    cluster.apply_example("raw-block.yaml")
    cluster.pod_ready("csi-py-block")
    cluster.pvc_bound("csi-py-block")
    log = cluster.logs("csi-py-block")
    m = re.search(r"BLOCK OK: (\d+) bytes", log)
    assert m, log
    assert int(m.group(1)) == 256 * MiB


@pytest.mark.once
def test_ephemeral_inline_volume(cluster: Cluster) -> None:
    cluster.apply_example("ephemeral-inline.yaml")
    cluster.pod_ready("csi-py-inline")
    out = cluster.exec("csi-py-inline", ["sh", "-c", "cat /scratch/file; df -k /scratch"])
    assert "scratch" in out
    total = _df_total_bytes(out)
    assert 200 * MiB < total <= 256 * MiB, f"a 256Mi inline volume; df says {total}"
    cluster.core.delete_namespaced_pod("csi-py-inline", cluster.namespace,
                                       grace_period_seconds=0)
    cluster.wait("pod csi-py-inline gone", lambda: not any(
        p.metadata.name == "csi-py-inline"
        for p in cluster.core.list_namespaced_pod(cluster.namespace).items))


def test_snapshot_and_restore(cluster: Cluster) -> None:
    if not cluster.crd_exists("volumesnapshots.snapshot.storage.k8s.io"):
        pytest.skip("the VolumeSnapshot CRDs and snapshot-controller are not installed"
                    " (hack/kind-demo installs them)")
    cluster.apply_example("snapshot/01-source.yaml")
    cluster.pod_ready("csi-py-snap-source")
    cluster.apply_example("snapshot/02-snapshot.yaml")
    snaps = cluster.dynamic.resources.get(api_version="snapshot.storage.k8s.io/v1",
                                          kind="VolumeSnapshot")

    def ready():
        snap = snaps.get(name="csi-py-snap", namespace=cluster.namespace)
        status = snap.to_dict().get("status") or {}
        if status.get("error"):
            pytest.fail(f"snapshot failed: {status['error']}\n{cluster.events()}",
                        pytrace=False)
        return status.get("readyToUse") is True and status

    status = cluster.wait("VolumeSnapshot csi-py-snap readyToUse", ready)
    assert _quantity(str(status["restoreSize"])) >= 512 * MiB
    cluster.apply_example("snapshot/03-restore.yaml")
    cluster.pod_ready("csi-py-snap-restore")
    cluster.pvc_bound("csi-py-snap-restore")
    assert "RESTORED: written before the snapshot" in cluster.logs("csi-py-snap-restore")


def test_clone(cluster: Cluster) -> None:
    cluster.apply_example("clone/01-source.yaml")
    cluster.pod_ready("csi-py-clone-source")
    cluster.apply_example("clone/02-clone.yaml")
    cluster.pod_ready("csi-py-clone")
    assert "CLONED: cloned content" in cluster.logs("csi-py-clone")


def _node_plugin_has_cap_sys_resource(cluster: Cluster) -> bool:
    """Whether the csi-py container of the node plugin holds CAP_SYS_RESOURCE (bit 24 of
    CapEff), which growing a mounted ext4 needs. A privileged container gets only what the
    runtime itself has: not in VMs that drop it, nor under user namespaces."""
    pod, _ = _driver_pod(cluster)
    status = cluster.exec(pod, ["cat", "/proc/self/status"], namespace=DRIVER_NAMESPACE,
                          container="csi-py")
    cap_eff = next(line.split()[1] for line in status.splitlines()
                   if line.startswith("CapEff:"))
    return bool(int(cap_eff, 16) >> 24 & 1)


# ext4's refusal to grow online here is the driver's, not a layout's: once.
@pytest.mark.parametrize("storage_class", [pytest.param("csi-py", marks=pytest.mark.once),
                                           "csi-py-xfs"])
def test_online_expansion(cluster: Cluster, storage_class: str) -> None:
    sc = cluster.storage.read_storage_class(storage_class)
    if not sc.allow_volume_expansion:
        pytest.skip(f"StorageClass {storage_class} does not allow expansion")
    cluster.apply_example("expansion/pvc-pod.yaml", lambda text: text.replace(
        "storageClassName: csi-py\n", f"storageClassName: {storage_class}\n"))
    cluster.pod_ready("csi-py-grow")
    cluster.pvc_bound("csi-py-grow")
    before = _df_total_bytes(cluster.exec("csi-py-grow", ["df", "-k", "/data"]))
    patch = yaml.safe_load((EXAMPLES / "expansion" / "patch.yaml").read_text())
    # The example names the default class; a claim's class is immutable once bound.
    patch["spec"]["storageClassName"] = storage_class
    cluster.core.patch_namespaced_persistent_volume_claim("csi-py-grow", cluster.namespace,
                                                          patch)
    fs_type = (sc.parameters or {}).get("fsType") or (sc.parameters or {}).get(
        "csi.storage.k8s.io/fstype", "ext4")
    if fs_type == "ext4" and not _node_plugin_has_cap_sys_resource(cluster):
        # The kernel refuses to grow a mounted ext4 without CAP_SYS_RESOURCE: the driver
        # must say so (NodeExpandVolume FAILED_PRECONDITION naming the capability), which
        # kubelet puts on the PVC as a NodeResizeError condition, instead of the resize
        # hanging silently.
        def refused():
            pvc = cluster.core.read_namespaced_persistent_volume_claim("csi-py-grow",
                                                                       cluster.namespace)
            return next((c.message for c in pvc.status.conditions or []
                         if "CAP_SYS_RESOURCE" in (c.message or "")), None)

        message = cluster.wait("the driver's refusal to grow a mounted ext4", refused)
        assert "ext4" in message, message
        after = _df_total_bytes(cluster.exec("csi-py-grow", ["df", "-k", "/data"]))
        assert after < before + 400 * MiB, "refused, yet the filesystem grew"
        # As the refusal says, the filesystem grows at the volume's next stage, unmounted.
        cluster.core.delete_namespaced_pod("csi-py-grow", cluster.namespace,
                                           grace_period_seconds=1)
        cluster.wait("pod csi-py-grow gone", lambda: not any(
            p.metadata.name == "csi-py-grow"
            for p in cluster.core.list_namespaced_pod(cluster.namespace).items))
        pod_doc = next(d for d in yaml.safe_load_all(
            (EXAMPLES / "expansion" / "pvc-pod.yaml").read_text()) if d and d["kind"] == "Pod")
        cluster.create(pod_doc)
        cluster.pod_ready("csi-py-grow")

    def grown():
        pvc = cluster.core.read_namespaced_persistent_volume_claim("csi-py-grow",
                                                                   cluster.namespace)
        return _quantity((pvc.status.capacity or {}).get("storage", "0")) >= GiB

    cluster.wait("PVC csi-py-grow capacity 1Gi", grown)
    # The filesystem grows: online (NodeExpandVolume), or at the new stage above.
    cluster.wait("the mounted filesystem to grow", lambda: _df_total_bytes(
        cluster.exec("csi-py-grow", ["df", "-k", "/data"])) > before + 400 * MiB)


def _driver_pod(cluster: Cluster) -> tuple[str, str]:
    pods = cluster.core.list_namespaced_pod(
        DRIVER_NAMESPACE, label_selector="app.kubernetes.io/component=node").items
    running = [p for p in pods if p.status.phase == "Running"]
    if not running:
        pytest.fail(f"no running csi-py node plugin pod in namespace {DRIVER_NAMESPACE}")
    return running[0].metadata.name, running[0].spec.node_name


@pytest.mark.once
def test_static_provisioning(cluster: Cluster) -> None:
    pod, node = _driver_pod(cluster)
    name = f"static-{cluster.namespace}"
    out = cluster.exec(pod, ["csi-py", "volume", "--endpoint", "unix:///csi/csi.sock",
                             "create", name, "--size", "1Gi", "--fs-type", "ext4"],
                       namespace=DRIVER_NAMESPACE, container="csi-py")
    m = re.search(r"\b(vol-[0-9a-f]{32})\b", out)
    assert m, f"csi-py volume create printed no volume id:\n{out}"
    volume_id = m.group(1)
    pv_name = f"csi-py-static-{cluster.namespace}"
    try:
        cluster.apply_example("static/pv-pvc.yaml", lambda text: text
                              .replace("REPLACE_WITH_VOLUME_ID", volume_id)
                              .replace("REPLACE_WITH_NODE_NAME", node)
                              .replace("name: csi-py-static\nspec:\n  capacity",
                                       f"name: {pv_name}\nspec:\n  capacity")
                              .replace("volumeName: csi-py-static", f"volumeName: {pv_name}"))
        cluster.pvc_bound("csi-py-static")
        ready = cluster.pod_ready("csi-py-static")
        assert ready.spec.node_name == node, "the PV's nodeAffinity places the pod"
        assert "static volume in use" in cluster.exec(
            "csi-py-static", ["cat", "/data/static.txt"])
        cluster.core.delete_namespaced_pod("csi-py-static", cluster.namespace,
                                           grace_period_seconds=1)
        cluster.core.delete_namespaced_persistent_volume_claim("csi-py-static",
                                                               cluster.namespace)
    finally:
        from kubernetes.client.exceptions import ApiException

        try:
            cluster.core.delete_persistent_volume(pv_name)
        except ApiException:
            pass
        # Retain: the volume outlives the PV; delete it once it is unpublished.
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            out = cluster.exec(pod, ["csi-py", "volume", "--endpoint", "unix:///csi/csi.sock",
                                     "delete", volume_id],
                               namespace=DRIVER_NAMESPACE, container="csi-py")
            listed = cluster.exec(pod, ["csi-py", "volume", "--endpoint",
                                        "unix:///csi/csi.sock", "list"],
                                  namespace=DRIVER_NAMESPACE, container="csi-py")
            if volume_id not in listed:
                break
            time.sleep(3)
        else:
            pytest.fail(f"could not delete static volume {volume_id}: {out}")


def test_volume_attributes_class(cluster: Cluster) -> None:
    try:
        resource = cluster.dynamic.resources.get(api_version="storage.k8s.io/v1",
                                                 kind="VolumeAttributesClass")
    except Exception:  # noqa: BLE001
        pytest.skip("this cluster has no storage.k8s.io/v1 VolumeAttributesClass (1.34+)")
    sc = cluster.storage.read_storage_class("csi-py")
    if not sc.allow_volume_expansion:
        pytest.skip("no external-resizer in this layout: nothing serves ModifyVolume")
    driver_pod, _ = _driver_pod(cluster)
    spec = cluster.core.read_namespaced_pod(driver_pod, DRIVER_NAMESPACE).spec
    args = next((c.args or [] for c in spec.containers if c.name == "csi-py"), [])
    if "--expansion=node" in args:
        pytest.skip("--expansion=node (deploy/distributed): the controller offers no"
                    " ModifyVolume, so VolumeAttributesClass changes are not served")
    doc = yaml.safe_load((EXAMPLES / "modify" / "volumeattributesclass.yaml").read_text())
    vac_name = f"csi-py-buffered-{cluster.namespace}"
    doc["metadata"]["name"] = vac_name
    resource.create(body=doc)
    try:
        cluster.apply_example("pvc-pod.yaml")
        cluster.pod_ready("csi-py-demo")
        cluster.core.patch_namespaced_persistent_volume_claim(
            "csi-py-demo", cluster.namespace, {"spec": {"volumeAttributesClassName": vac_name}})
        cluster.wait("PVC csi-py-demo to use the VolumeAttributesClass", lambda: (
            cluster.core.read_namespaced_persistent_volume_claim("csi-py-demo",
                                                                 cluster.namespace)
            .status.current_volume_attributes_class_name == vac_name))
    finally:
        cluster.core.delete_namespaced_pod("csi-py-demo", cluster.namespace,
                                           grace_period_seconds=1)
        cluster.core.delete_namespaced_persistent_volume_claim("csi-py-demo",
                                                               cluster.namespace)
        cluster.wait("PVC csi-py-demo deleted", lambda: not any(
            p.metadata.name == "csi-py-demo" for p in
            cluster.core.list_namespaced_persistent_volume_claim(cluster.namespace).items))
        resource.delete(name=vac_name)

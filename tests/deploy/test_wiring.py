"""The mistakes that break a cluster silently: the manifests are valid, every pod
starts, and yet no volume is ever provisioned, attached or mounted. Checked on every
rendering (both kustomize layouts and the chart with several sets of values)."""

from __future__ import annotations

import posixpath
import re
from typing import Any

import pytest

from tests.deploy import tools

RENDERINGS = list(tools.RENDERINGS)
# Renderings that replace the pinned images and scheduling defaults on purpose.
CUSTOM_IMAGES = {"helm-everything", "helm-everything-single-node"}
SIDECAR_IMAGES = {
    "node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar",
    "liveness-probe": "registry.k8s.io/sig-storage/livenessprobe",
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner",
    "csi-attacher": "registry.k8s.io/sig-storage/csi-attacher",
    "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer",
}
DRIVER = "csi-py"


# --- helpers ----------------------------------------------------------------------------

def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def containers(docs: list[dict]) -> dict[str, dict]:
    ds = one(docs, "DaemonSet")
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def flag(container: dict, name: str) -> str | None:
    """The value of --name=value (or --name value) in a container's args."""
    args = container.get("args", [])
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args) and not args[i + 1].startswith("--"):
            return args[i + 1]
        if arg == f"--{name}":
            return "true"
    return None


def host_path_of(docs: list[dict], container: dict, path: str) -> str:
    """Where `path` inside `container` lives on the host, through its hostPath mounts."""
    volumes = {v["name"]: v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    best = None
    for mount in container.get("volumeMounts", []):
        mp = mount["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, mount)
    assert best is not None, f"{path} is on no volume of container {container['name']}"
    mp, mount = best
    volume = volumes[mount["name"]]
    assert "hostPath" in volume, f"volume {mount['name']} is not a hostPath"
    return posixpath.normpath(volume["hostPath"]["path"] + path[len(mp):])


def env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def port(container: dict, name: str) -> int | None:
    for p in container.get("ports", []):
        if p.get("name") == name:
            return p["containerPort"]
    return None


@pytest.fixture(params=RENDERINGS)
def docs(request) -> list[dict[str, Any]]:
    return tools.render(request.param)


@pytest.fixture
def rendering(docs, request) -> str:
    return request.node.callspec.params["docs"]


# --- names and sockets ------------------------------------------------------------------

def test_driver_name_is_the_same_everywhere(docs) -> None:
    driver = containers(docs)[DRIVER]
    name = flag(driver, "driver-name")
    assert name, "the driver container must pass --driver-name"
    assert one(docs, "CSIDriver")["metadata"]["name"] == name
    for sc in by_kind(docs, "StorageClass"):
        assert sc["provisioner"] == name, f"StorageClass {sc['metadata']['name']}"
    for vsc in by_kind(docs, "VolumeSnapshotClass"):
        assert vsc["driver"] == name
    # The socket directory is conventionally named after the driver.
    ds_volumes = one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    socket_dir = next(v for v in ds_volumes if v["name"] == "socket-dir")["hostPath"]["path"]
    assert posixpath.basename(socket_dir) == name


def test_registrar_registers_the_socket_the_driver_serves(docs) -> None:
    cs = containers(docs)
    driver = cs[DRIVER]
    endpoint = flag(driver, "endpoint")
    assert endpoint and endpoint.startswith("unix:///"), endpoint
    served_on_host = host_path_of(docs, driver, endpoint[len("unix://"):])
    registrar = cs["node-driver-registrar"]
    registration = flag(registrar, "kubelet-registration-path")
    assert registration == served_on_host, (
        f"kubelet would dial {registration}, the driver serves {served_on_host} on the host")
    # The registrar's liveness probe is its --http-endpoint's /healthz (the deprecated
    # --mode=kubelet-registration-probe exec probe is gone).
    assert flag(registrar, "mode") is None
    probe = registrar["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    http = int(flag(registrar, "http-endpoint").rsplit(":", 1)[1])
    assert probe["port"] in (http, next(p["name"] for p in registrar["ports"]
                                        if p["containerPort"] == http))
    # The registrar's registration dir is kubelet's plugins_registry.
    kubelet_dir = host_path_of(docs, driver, _kubelet_mount(driver)["mountPath"])
    assert host_path_of(docs, registrar, "/registration") == f"{kubelet_dir}/plugins_registry"
    assert served_on_host.startswith(kubelet_dir + "/plugins/")


def test_every_sidecar_talks_to_the_driver_socket(docs) -> None:
    cs = containers(docs)
    driver = cs[DRIVER]
    served = host_path_of(docs, driver, flag(driver, "endpoint")[len("unix://"):])
    for name, c in cs.items():
        if name == DRIVER:
            continue
        address = flag(c, "csi-address")
        assert address, f"{name} has no --csi-address"
        assert host_path_of(docs, c, address) == served, f"{name} dials another socket"


def _kubelet_mount(driver: dict) -> dict:
    mounts = [m for m in driver["volumeMounts"] if m["name"] == "kubelet-dir"]
    assert len(mounts) == 1, "the driver must mount the kubelet dir once"
    return mounts[0]


def test_kubelet_dir_is_mounted_bidirectional(docs) -> None:
    cs = containers(docs)
    driver = cs[DRIVER]
    mount = _kubelet_mount(driver)
    assert mount.get("mountPropagation") == "Bidirectional", (
        "without Bidirectional propagation kubelet and pods never see the driver's mounts")
    # Mounted at the same path as on the host: staging/target paths kubelet passes are
    # host paths.
    assert host_path_of(docs, driver, mount["mountPath"]) == mount["mountPath"]
    assert driver["securityContext"].get("privileged") is True, (
        "Bidirectional propagation and loop ioctls need a privileged container")
    for name, c in cs.items():
        if name != DRIVER:
            for m in c.get("volumeMounts", []):
                assert m.get("mountPropagation") in (None, "None"), f"{name}: {m}"


def test_pool_and_dev_are_host_paths_at_the_same_place(docs) -> None:
    driver = containers(docs)[DRIVER]
    pool = flag(driver, "pool")
    assert pool and pool.startswith("/")
    # Backing files are reported by path in /sys/block/loop*/loop/backing_file.
    assert host_path_of(docs, driver, pool) == pool
    assert host_path_of(docs, driver, "/dev") == "/dev"
    volumes = {v["name"]: v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pool-dir"]["hostPath"]["type"] == "DirectoryOrCreate"


def test_node_id_is_the_kubernetes_node_name(docs) -> None:
    driver = containers(docs)[DRIVER]
    assert flag(driver, "node-id") == "$(NODE_NAME)"
    env = {e["name"]: e for e in driver["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


# --- which sidecars run, and how --------------------------------------------------------

def test_attach_required_matches_the_attacher(docs) -> None:
    cs = containers(docs)
    attach = one(docs, "CSIDriver")["spec"]["attachRequired"]
    assert attach == ("csi-attacher" in cs), (
        "attachRequired without an attacher leaves every pod waiting for its"
        " VolumeAttachment; an attacher without it is never used")


def test_expansion_is_allowed_only_with_a_resizer(docs) -> None:
    has_resizer = "csi-resizer" in containers(docs)
    for sc in by_kind(docs, "StorageClass"):
        if sc.get("allowVolumeExpansion"):
            assert has_resizer, f"{sc['metadata']['name']} allows expansion, nobody serves it"


def test_csidriver_capabilities(docs) -> None:
    spec = one(docs, "CSIDriver")["spec"]
    assert spec["podInfoOnMount"] is True
    assert spec["fsGroupPolicy"] == "File"
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    assert spec["storageCapacity"] is True
    provisioner = containers(docs)["csi-provisioner"]
    assert flag(provisioner, "enable-capacity") == "true", (
        "storageCapacity: true without published CSIStorageCapacity objects makes the"
        " scheduler find no node with room")
    assert {"POD_NAME", "NAMESPACE"} <= env_names(provisioner)


def test_storage_classes_wait_for_first_consumer(docs, rendering) -> None:
    for sc in by_kind(docs, "StorageClass"):
        if rendering not in CUSTOM_IMAGES:
            assert sc["volumeBindingMode"] == "WaitForFirstConsumer", sc["metadata"]["name"]
        params = sc.get("parameters", {})
        # external-provisioner logs the bare fsType key as deprecated on every provision.
        assert "fsType" not in params
        assert params.get("csi.storage.k8s.io/fstype") in ("ext4", "xfs", "btrfs")
        assert params.get("provisioning", "thin") in ("thin", "thick")
        unknown = {k for k in params if k != "provisioning"
                   and not k.startswith("csi.storage.k8s.io/")}
        assert not unknown, f"the driver refuses unknown parameters {unknown}"


def test_layout_specific_sidecar_modes(docs) -> None:
    cs = containers(docs)
    distributed = flag(cs["csi-provisioner"], "node-deployment") == "true"
    for name in ("csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer"):
        if name not in cs:
            continue
        c = cs[name]
        leader = flag(c, "leader-election") == "true"
        node_mode = flag(c, "node-deployment") == "true"
        if distributed and name != "csi-resizer":
            assert not leader, f"{name}: one instance per node must not elect a leader"
            if name in ("csi-provisioner", "csi-snapshotter"):
                assert node_mode and "NODE_NAME" in env_names(c), (
                    f"{name} must run in node-deployment mode with NODE_NAME")
        else:
            assert leader and not node_mode, f"{name}: single-node layout uses leader election"
            assert flag(c, "leader-election-namespace") == "$(NAMESPACE)"
            assert "NAMESPACE" in env_names(c)
    if distributed:
        assert "csi-attacher" not in cs, "external-attacher has no per-node mode"
        if "csi-resizer" in cs:
            # The resizer leader may be on another node than the volume: it must never
            # reach ControllerExpandVolume, so the drivers grow volumes on their node.
            assert flag(cs["csi-py"], "expansion") == "node", (
                "a distributed resizer needs the driver's --expansion=node")
            assert flag(cs["csi-resizer"], "leader-election") == "true", (
                "one resizer for the cluster: the per-node copies must elect a leader")


def test_images_are_pinned(docs, rendering) -> None:
    for name, c in containers(docs).items():
        image = c["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image}"
        if rendering in CUSTOM_IMAGES:
            continue
        if name in SIDECAR_IMAGES:
            assert repo == SIDECAR_IMAGES[name], f"{name}: {image}"
            assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{name}: {image}"
        assert c.get("imagePullPolicy") == "IfNotPresent"


def test_liveness_and_metrics_ports_line_up(docs) -> None:
    cs = containers(docs)
    driver = cs[DRIVER]
    # livenessprobe's --http-endpoint (its --health-port is deprecated).
    assert flag(cs["liveness-probe"], "health-port") is None
    health = int(flag(cs["liveness-probe"], "http-endpoint").rsplit(":", 1)[1])
    assert port(driver, "healthz") == health
    assert driver["livenessProbe"]["httpGet"]["port"] in ("healthz", health)
    address = flag(driver, "metrics-address")
    services = [s for s in by_kind(docs, "Service")
                if any(p.get("name") == "metrics" for p in s["spec"]["ports"])]
    if address is None:
        assert port(driver, "metrics") is None and not services
        return
    metrics_port = int(address.rsplit(":", 1)[1])
    assert port(driver, "metrics") == metrics_port
    ports = {p for c in cs.values() for p in (c.get("ports") or [])
             for p in [p["containerPort"]]}
    assert len(ports) == sum(len(c.get("ports") or []) for c in cs.values()), "port clash"
    assert len(services) == 1
    svc = services[0]
    sp = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")
    assert sp["port"] == metrics_port and sp["targetPort"] in ("metrics", metrics_port)
    annotations = svc["metadata"]["annotations"]
    assert annotations.get("prometheus.io/scrape", "true") == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "Service selects no pod"


def test_daemonset_selector_matches_its_pods(docs, rendering) -> None:
    ds = one(docs, "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    tolerations = ds["spec"]["template"]["spec"].get("tolerations", [])
    assert {"operator": "Exists"} in tolerations or rendering in CUSTOM_IMAGES


def test_everything_namespaced_is_in_one_namespace(docs) -> None:
    cluster_scoped = {"Namespace", "CSIDriver", "StorageClass", "VolumeSnapshotClass",
                      "ClusterRole", "ClusterRoleBinding"}
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] in cluster_scoped:
            assert ns is None, f"{d['kind']}/{d['metadata']['name']} is cluster-scoped"
        else:
            assert ns == tools.NAMESPACE, f"{d['kind']}/{d['metadata']['name']}: {ns}"
    for ns_obj in by_kind(docs, "Namespace"):
        labels = ns_obj["metadata"].get("labels", {})
        assert labels.get("pod-security.kubernetes.io/enforce") == "privileged"


# --- RBAC: every sidecar can do its job, and nothing more is granted ---------------------

# (apiGroup, resource) -> verbs each sidecar needs. "ns" marks rules needed only in the
# driver's namespace.
NEEDS: dict[str, list[tuple[str, str, set[str]]]] = {
    "csi-provisioner": [
        ("", "persistentvolumes", {"get", "list", "watch", "create", "delete"}),
        ("", "persistentvolumeclaims", {"get", "list", "watch", "update"}),
        ("storage.k8s.io", "storageclasses", {"get", "list", "watch"}),
        ("", "events", {"create", "patch"}),
        ("storage.k8s.io", "csinodes", {"get", "list", "watch"}),
        ("", "nodes", {"get", "list", "watch"}),
        ("snapshot.storage.k8s.io", "volumesnapshots", {"get", "list"}),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", {"get", "list"}),
        ("storage.k8s.io", "volumeattachments", {"get", "list", "watch"}),
        # Read by name for a PVC with a VolumeAttributesClass (see sidecar_facts.yaml).
        ("storage.k8s.io", "volumeattributesclasses", {"get"}),
    ],
    "csi-attacher": [
        ("", "persistentvolumes", {"get", "list", "watch", "patch"}),
        ("storage.k8s.io", "csinodes", {"get", "list", "watch"}),
        ("storage.k8s.io", "volumeattachments", {"get", "list", "watch", "patch"}),
        ("storage.k8s.io", "volumeattachments/status", {"patch"}),
    ],
    "csi-snapshotter": [
        ("", "events", {"create", "patch"}),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", {"get", "list", "watch"}),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents",
         {"get", "list", "watch", "update", "patch"}),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", {"update", "patch"}),
    ],
    "csi-resizer": [
        ("", "persistentvolumes", {"get", "list", "watch", "patch"}),
        ("", "persistentvolumeclaims", {"get", "list", "watch"}),
        ("", "persistentvolumeclaims/status", {"patch"}),
        ("", "events", {"create"}),
        ("storage.k8s.io", "volumeattributesclasses", {"get", "list", "watch"}),
    ],
}
NEEDS_IN_NAMESPACE: dict[str, list[tuple[str, str, set[str]]]] = {
    "leader-election": [("coordination.k8s.io", "leases", {"get", "create", "update"})],
    "capacity": [
        ("storage.k8s.io", "csistoragecapacities",
         {"get", "list", "watch", "create", "update", "patch", "delete"}),
        ("", "pods", {"get"}),
    ],
}
# Granted beyond the strict needs above, on purpose (see the comments in deploy/rbac).
ALSO_ALLOWED: dict[str, list[tuple[str, str, set[str]]]] = {
    "csi-provisioner": [
        ("", "persistentvolumes", {"patch"}),
        ("", "events", {"list", "watch", "update"}),
        ("snapshot.storage.k8s.io", "volumesnapshots", {"watch", "update"}),
    ],
    "csi-snapshotter": [
        ("", "events", {"list", "watch", "update"}),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", {"get", "list", "watch"}),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents",
         {"get", "list", "watch", "update", "patch"}),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status",
         {"update", "patch"}),
    ],
    "csi-resizer": [
        ("", "events", {"list", "watch", "update", "patch"}),
        ("", "pods", {"get", "list", "watch"}),
    ],
    "leader-election": [("coordination.k8s.io", "leases", {"watch", "list", "delete"})],
}


def granted(docs: list[dict], sa_name: str, namespace: str) -> tuple[set, set]:
    """(cluster-wide, namespace-only) sets of (group, resource, verb) the SA has."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    cluster: set = set()
    local: set = set()

    def expand(rule: dict) -> set:
        out = set()
        for g in rule.get("apiGroups", []):
            for r in rule.get("resources", []):
                for v in rule.get("verbs", []):
                    out.add((g, r, v))
        return out

    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = b.get("subjects", [])
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name
                   and s.get("namespace") == namespace for s in subjects):
            continue
        ref = b["roleRef"]
        key = (ref["kind"], None if ref["kind"] == "ClusterRole" else b["metadata"]["namespace"],
               ref["name"])
        assert key in roles, f"{b['kind']} {b['metadata']['name']} refers to missing {key}"
        rules = set().union(*(expand(r) for r in roles[key]["rules"]))
        if b["kind"] == "ClusterRoleBinding":
            cluster |= rules
        else:
            assert b["metadata"]["namespace"] == namespace
            local |= rules
    return cluster, local


def _covers(have: set, group: str, resource: str, verb: str) -> bool:
    return any(g in (group, "*") and r in (resource, "*") and v in (verb, "*")
               for g, r, v in have)


def _wanted(docs) -> tuple[list, list, list]:
    cs = containers(docs)
    need_cluster = [n for name in NEEDS if name in cs for n in NEEDS[name]]
    need_local = []
    allowed = [a for name in ALSO_ALLOWED if name in cs for a in ALSO_ALLOWED[name]]
    if any(flag(c, "leader-election") == "true" for c in cs.values()):
        need_local += NEEDS_IN_NAMESPACE["leader-election"]
        allowed += ALSO_ALLOWED["leader-election"]
    if flag(cs["csi-provisioner"], "enable-capacity") == "true":
        need_local += NEEDS_IN_NAMESPACE["capacity"]
    return need_cluster, need_local, allowed


def test_each_sidecar_has_the_rbac_it_needs(docs) -> None:
    ds = one(docs, "DaemonSet")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = ds["metadata"]["namespace"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    cluster, local = granted(docs, sa, namespace)
    need_cluster, need_local, _ = _wanted(docs)
    missing = [f"{g or 'core'}/{r}: {v}" for g, r, verbs in need_cluster for v in sorted(verbs)
               if not _covers(cluster, g, r, v)]
    missing += [f"{g or 'core'}/{r} in {namespace}: {v}" for g, r, verbs in need_local
                for v in sorted(verbs) if not _covers(cluster | local, g, r, v)]
    assert not missing, "ServiceAccount lacks:\n" + "\n".join(missing)


def test_rbac_grants_nothing_beyond_what_the_sidecars_use(docs) -> None:
    ds = one(docs, "DaemonSet")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    cluster, local = granted(docs, sa, ds["metadata"]["namespace"])
    need_cluster, need_local, allowed = _wanted(docs)
    ok = {(g, r, v) for g, r, verbs in need_cluster + need_local + allowed for v in verbs}
    extra = sorted((cluster | local) - ok)
    assert not extra, f"granted but used by no running sidecar: {extra}"
    for g, r, v in cluster | local:
        assert "*" not in (g, r, v), "no wildcards"
        assert r != "secrets", "the driver needs no secrets"
    # Namespace-only needs stay namespaced.
    assert not any(r in ("leases", "csistoragecapacities") for _, r, _ in cluster)

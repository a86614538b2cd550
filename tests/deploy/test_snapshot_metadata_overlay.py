"""deploy/snapshot-metadata (opt-in changed-block tracking): `kustomize build` of it
validates against the Kubernetes schemas (the SnapshotMetadataService is a CRD kind,
checked by hand), the external-snapshot-metadata sidecar joins the driver's pod on the
driver's socket, its TLS secret is mounted, the Service reaches its port, the
SnapshotMetadataService is named after the driver and points at that Service, and the
sidecar's service account has the access the sidecar uses. The default layouts stay
without it."""

from __future__ import annotations

from typing import Any

from tests.deploy import tools
from tests.deploy.test_schemas import validate_docs

CBT_KIND = ("cbt.storage.k8s.io/v1alpha1", "SnapshotMetadataService")


def _docs() -> list[dict[str, Any]]:
    return tools.kustomize_build("snapshot-metadata")


def _one(docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and
             (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_overlay_validates_against_the_schemas() -> None:
    docs = _docs()
    core = [d for d in docs if (d["apiVersion"], d["kind"]) != CBT_KIND]
    failures = validate_docs(core, "deploy/snapshot-metadata")
    assert not failures, "\n".join(failures)
    sms = _one(docs, "SnapshotMetadataService")
    assert set(sms["spec"]) == {"address", "audience", "caCert"}


def test_sidecar_shares_the_driver_socket_and_serves_through_the_service() -> None:
    docs = _docs()
    ds = _one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar = containers["csi-snapshot-metadata"]
    assert "--csi-address=/csi/csi.sock" in sidecar["args"]
    driver_mounts = {m["name"]: m["mountPath"] for m in containers["csi-py"]["volumeMounts"]}
    sidecar_mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert sidecar_mounts["socket-dir"] == driver_mounts["socket-dir"] == "/csi"
    tls = sidecar_mounts["snapshot-metadata-tls"]
    assert f"--tls-cert={tls}/tls.crt" in sidecar["args"]
    assert f"--tls-key={tls}/tls.key" in sidecar["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["snapshot-metadata-tls"]["secret"]["secretName"]
    assert secret == "csi-py-snapshot-metadata-tls"
    assert ":" in sidecar["image"] and not sidecar["image"].endswith(":latest")
    # The other containers are untouched by the patch.
    assert set(containers) - {"csi-snapshot-metadata"} == {
        c["name"] for c in _one(tools.kustomize_build("single-node"), "DaemonSet")
        ["spec"]["template"]["spec"]["containers"]}
    svc = _one(docs, "Service", "csi-py-snapshot-metadata")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in sidecar["ports"]}
    sms = _one(docs, "SnapshotMetadataService")
    assert sms["metadata"]["name"] == _one(docs, "CSIDriver")["metadata"]["name"]
    host, _, svc_port = sms["spec"]["address"].rpartition(":")
    assert host == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}"
    assert int(svc_port) == port["port"]


def test_sidecar_has_the_access_it_uses() -> None:
    docs = _docs()
    ds = _one(docs, "DaemonSet")
    account = ds["spec"]["template"]["spec"]["serviceAccountName"]
    binding = _one(docs, "ClusterRoleBinding", "csi-py-snapshot-metadata")
    assert {"kind": "ServiceAccount", "name": account,
            "namespace": ds["metadata"]["namespace"]} in binding["subjects"]
    role = _one(docs, "ClusterRole", binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    for need in [("cbt.storage.k8s.io", "snapshotmetadataservices", "get"),
                 ("authentication.k8s.io", "tokenreviews", "create"),
                 ("authorization.k8s.io", "subjectaccessreviews", "create"),
                 ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
                 ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get")]:
        assert need in granted, need


def test_default_layouts_do_not_deploy_it() -> None:
    for layout in tools.LAYOUTS:
        names = {c["name"] for d in tools.kustomize_build(layout) if d["kind"] == "DaemonSet"
                 for c in d["spec"]["template"]["spec"]["containers"]}
        assert "csi-snapshot-metadata" not in names, layout

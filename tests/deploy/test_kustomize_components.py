"""The kustomize extension points docs/deployment.md documents: the kubelet-dir
component (another kubelet root directory) and an `images:` override (your registry),
each built into an overlay of both layouts and checked like the layouts themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy import test_wiring, tools
from tests.deploy.test_schemas import validate_docs

MICROK8S = "/var/snap/microk8s/common/var/lib/kubelet"


def build_overlay(tmp_path: Path, layout: str, extra: str) -> list[dict]:
    cmd = tools.kustomize_command()
    if not cmd:
        tools.unavailable("kustomize", "neither kustomize nor `kubectl kustomize` found")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize wants relative paths to other kustomizations.
    deploy = os.path.relpath(tools.DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {deploy}/{layout}\n" + extra.replace("DEPLOY", deploy))
    return tools.load_docs(tools.run([*cmd, str(overlay)]))


@pytest.mark.parametrize("layout", tools.LAYOUTS)
def test_kubelet_dir_component_moves_every_kubelet_path(tmp_path, layout) -> None:
    docs = build_overlay(tmp_path, layout, "components:\n  - DEPLOY/components/kubelet-dir\n")
    text = repr(docs)
    assert "/var/lib/kubelet" not in text.replace(MICROK8S, "")
    test_wiring.test_registrar_registers_the_socket_the_driver_serves(docs)
    test_wiring.test_kubelet_dir_is_mounted_bidirectional(docs)
    driver = test_wiring.containers(docs)["csi-py"]
    kubelet = next(m for m in driver["volumeMounts"] if m["name"] == "kubelet-dir")
    assert kubelet["mountPath"] == MICROK8S
    assert not validate_docs(docs, f"{layout} + kubelet-dir")


@pytest.mark.parametrize("layout", tools.LAYOUTS)
def test_images_override_points_every_image_at_your_registry(tmp_path, layout) -> None:
    """The `images:` list docs/deployment.md shows, for a private registry."""
    names = ["csi-py", *test_wiring.SIDECAR_IMAGES.values()]
    entries = "".join(
        f"  - name: {n}\n    newName: registry.example.com/{n.rsplit('/', 1)[-1]}\n"
        for n in names)
    docs = build_overlay(tmp_path, layout, "images:\n" + entries)
    images = [c["image"] for c in test_wiring.containers(docs).values()]
    assert images and all(i.startswith("registry.example.com/") for i in images), images
    docs_text = (tools.REPO / "docs" / "deployment.md").read_text()
    for n in names:
        assert f"- name: {n}" in docs_text, f"docs/deployment.md's images: example lacks {n}"


# The two objects of external-snapshotter v8.7.0's snapshot-controller install that the
# distributed-snapshotting component patches, as that release ships them (trimmed to
# what the patches touch), so the check runs offline.
SNAPSHOT_CONTROLLER = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: snapshot-controller
  namespace: kube-system
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: snapshot-controller}
  template:
    metadata:
      labels: {app.kubernetes.io/name: snapshot-controller}
    spec:
      containers:
        - name: snapshot-controller
          image: registry.k8s.io/sig-storage/snapshot-controller:v8.7.0
          args: ["--v=5", "--leader-election=true"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: snapshot-controller-runner
rules:
  - apiGroups: [""]
    resources: ["persistentvolumes"]
    verbs: ["get", "list", "watch"]
"""


def test_distributed_snapshotting_component_configures_snapshot_controller(tmp_path) -> None:
    cmd = tools.kustomize_command()
    if not cmd:
        tools.unavailable("kustomize", "neither kustomize nor `kubectl kustomize` found")
    overlay = tmp_path / "snapshot-controller"
    overlay.mkdir()
    (overlay / "upstream.yaml").write_text(SNAPSHOT_CONTROLLER)
    component = os.path.relpath(tools.DEPLOY / "components" / "distributed-snapshotting",
                                overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - upstream.yaml\ncomponents:\n  - {component}\n")
    docs = tools.load_docs(tools.run([*cmd, str(overlay)]))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--v=5", "--leader-election=true", "--enable-distributed-snapshotting=true"]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]} \
        in role["rules"]
    assert not validate_docs(docs, "snapshot-controller + distributed-snapshotting")

"""The Helm chart: `helm lint --strict` with each values file, the strict values schema,
and that it renders the same objects as the kustomize layouts."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.deploy import tools


@pytest.mark.parametrize(
    "values", [(), ("values-distributed.yaml",)], ids=["default", "distributed"])
def test_helm_lint_strict(values: tuple[str, ...]) -> None:
    helm = tools.require_tool("helm")
    argv = [helm, "lint", "--strict", str(tools.CHART), "--kube-version", tools.HELM_KUBE_VERSION]
    for v in values:
        argv += ["-f", str(tools.CHART / v)]
    out = tools.run(argv)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("bad", [
    "layout=multi-node",
    "driver.fsType=ext4",                     # a typo'd key (it is defaultFsType)
    "driver.defaultFsType=zfs",
    "driver.name=Loop_Driver",
    "storageClasses[0].provisioning=sparse",
    "driver.maxVolumesPerNode=-1",
    "metrics.port=70000",
    "sidecars.provisioner.timeout=2 minutes",
    "sidecars.attacher.image.tag=",
    "kubeletDir=var/lib/kubelet",
])
def test_values_schema_rejects(bad: str) -> None:
    helm = tools.require_tool("helm")
    proc = subprocess.run(
        [helm, "template", tools.RELEASE, str(tools.CHART), "--kube-version",
         tools.HELM_KUBE_VERSION, "--set", bad],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr.lower() or "values don't meet" in proc.stderr, proc.stderr


def test_schema_is_strict_everywhere() -> None:
    """Every object in values.schema.json closes its properties (a typo is an error)."""
    schema = json.loads((tools.CHART / "values.schema.json").read_text())
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                if node.get("additionalProperties") is not False:
                    loose.append(path or "/")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    assert not loose, f"objects without additionalProperties: false: {loose}"
    values = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), "values.yaml and the schema disagree"


def _comparable(docs: list[dict]) -> dict[tuple[str, str], dict]:
    """Objects by (kind, name), without what only Helm adds (its labels) and without the
    Namespace, which `helm install --create-namespace` makes."""
    out = {}
    for d in docs:
        if d["kind"] == "Namespace":
            continue
        d = json.loads(json.dumps(d))
        for meta in _metas(d):
            labels = meta.get("labels", {})
            for key in ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                        "helm.sh/chart", "app.kubernetes.io/part-of"):
                labels.pop(key, None)
            if not labels:
                meta.pop("labels", None)
            annotations = meta.get("annotations")
            if annotations is not None and not annotations:
                meta.pop("annotations")
        out[(d["kind"], d["metadata"]["name"])] = d
    return out


def _metas(d: dict):
    yield d["metadata"]
    template = d.get("spec", {}).get("template") if isinstance(d.get("spec"), dict) else None
    if template:
        yield template["metadata"]


@pytest.mark.parametrize("layout,values", [
    ("single-node", ()),
    ("distributed", ("values-distributed.yaml",)),
])
def test_chart_renders_the_same_objects_as_kustomize(layout, values) -> None:
    k = _comparable(tools.kustomize_build(layout))
    h = _comparable(tools.helm_template(values, ("driver.maxVolumesPerNode=0",)))
    assert sorted(k) == sorted(h), "different objects"
    for key in k:
        assert k[key] == h[key], f"{key} differs between deploy/{layout} and the chart"

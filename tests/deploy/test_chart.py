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
    "driver.logFormat=xml",
    "storageClasses[0].volumeBindingMode=Later",
    "storageClasses[0].parameters.fsType=xfs",    # has its own key
    "sidecars.provisioner.httpPort=0",
    "metrics.serviceMonitor.interval=often",
    "updateStrategy.type=Recreate",
    "imageRegistry=https://mirror",
    "sidecars.resizer.resources.requests.gpu=1",
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
    # `global` is shared with a parent chart, which may put anything there.
    assert not [p for p in loose if p != "/properties/global"], (
        f"objects without additionalProperties: false: {loose}")
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


def test_chart_works_as_a_subchart(tmp_path) -> None:
    """A parent chart with csi-py under charts/: its `global` (with keys csi-py does not
    know) passes the strict schema, global.imageRegistry applies, and the parent's
    values for csi-py reach it."""
    import shutil

    helm = tools.require_tool("helm")
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(tools.CHART, parent / "charts" / "csi-py")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n"
        "dependencies:\n  - name: csi-py\n    version: 0.1.0\n")
    (parent / "values.yaml").write_text(
        "global:\n  imageRegistry: mirror.example.com:5000\n  storageClass: fast\n"
        "  team: storage\ncsi-py:\n  driver:\n    logFormat: json\n")
    out = tools.run([helm, "template", "platform", str(parent), "--namespace", "csi-py",
                     "--kube-version", tools.HELM_KUBE_VERSION])
    docs = tools.load_docs(out)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    assert images["csi-py"] == "mirror.example.com:5000/csi-py:0.1.0"
    assert images["csi-provisioner"] == (
        "mirror.example.com:5000/sig-storage/csi-provisioner:v6.4.0")
    driver = next(c for c in pod["containers"] if c["name"] == "csi-py")
    assert "--log-format=json" in driver["args"]


def test_image_registry_prefix_replaces_the_registry_host() -> None:
    docs = tools.helm_template((), ("imageRegistry=registry.example.org/k8s",))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    images = sorted(c["image"] for c in ds["spec"]["template"]["spec"]["containers"])
    assert all(i.startswith("registry.example.org/k8s/") for i in images), images
    assert "registry.example.org/k8s/sig-storage/csi-attacher:v4.13.0" in images
    assert not any("registry.k8s.io" in i for i in images)


def test_the_full_values_file_sets_every_value() -> None:
    """tests/deploy/values-everything.yaml, which the schema and wiring tests render,
    sets every key of values.yaml: a new value cannot go untested."""
    everything = yaml.safe_load(tools.EVERYTHING_VALUES.read_text())
    defaults = yaml.safe_load((tools.CHART / "values.yaml").read_text())

    def leaves(node, path=()):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from leaves(value, (*path, key))
        else:
            yield path, node

    missing = [".".join(p) for p, _ in leaves(defaults) if not _has(everything, p)]
    assert not missing, f"values-everything.yaml does not set: {missing}"
    changed = [p for p, v in leaves(defaults) if _get(everything, p) != v]
    assert len(changed) > 80, "most values should differ from their defaults"


def _has(node, path):
    for key in path:
        if isinstance(node, list) and isinstance(key, str):
            return False
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _get(node, path):
    for key in path:
        node = node[key]
    return node


def test_chart_readme_lists_every_value() -> None:
    """charts/csi-py/README.md's table is what hack/chart-docs writes from values.yaml
    (which also fails when a value has no `# --` description)."""
    import sys

    proc = subprocess.run([sys.executable, str(tools.REPO / "hack" / "chart-docs"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = (tools.CHART / "README.md").read_text()
    values = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, key

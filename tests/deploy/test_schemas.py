"""Every manifest we ship, validated OFFLINE against the official Kubernetes OpenAPI
schemas bundled in the PyPI package kubernetes-validate (strict: unknown fields are
errors), at the oldest Kubernetes the chart supports and at newer ones.

Covered: `kustomize build` of each layout in deploy/, every file in examples/ (the
expansion patch applied to its PVC), and the chart rendered with default values, the
distributed example and variants. The snapshot kinds are CRDs, not in the core schemas:
they are checked to be exactly the expected CRD kinds, with their required fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy import tools

# Oldest supported (the chart's kubeVersion), a current one, and the newest bundled.
K8S_VERSIONS = ("1.30", "1.34", "latest")
# Kinds that exist only from some Kubernetes version on.
MIN_VERSION = {("storage.k8s.io/v1", "VolumeAttributesClass"): "1.34"}
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
}
# Prometheus Operator kinds the chart renders only when asked (metrics.*Monitor).
MONITOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
# Every minor version the chart supports (its kubeVersion is >=1.30) up to the newest
# schemas kubernetes-validate bundles, for the rendering that sets every value.
ALL_K8S_VERSIONS = tuple(f"1.{minor}" for minor in range(30, 38))


def _kv():
    try:
        import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
    except ImportError as exc:
        tools.unavailable("kubernetes_validate", str(exc))
    return kv


def _version(kv: Any, wanted: str) -> str:
    return kv.latest_version() if wanted == "latest" else wanted


def _older(a: str, b: str) -> bool:
    return tuple(int(x) for x in a.split(".")[:2]) < tuple(int(x) for x in b.split(".")[:2])


def check_crd(doc: dict[str, Any]) -> None:
    """What the snapshot CRDs' schemas require of the two kinds we ship."""
    kind = doc["kind"]
    assert doc.get("metadata", {}).get("name"), f"{kind} without a name"
    if kind == "VolumeSnapshotClass":
        assert set(doc) <= {"apiVersion", "kind", "metadata", "driver", "deletionPolicy",
                            "parameters"}, f"unknown VolumeSnapshotClass fields: {sorted(doc)}"
        assert doc.get("driver"), "VolumeSnapshotClass.driver is required"
        assert doc.get("deletionPolicy") in ("Delete", "Retain")
    elif kind in ("ServiceMonitor", "PodMonitor"):
        spec = doc.get("spec") or {}
        endpoints = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
        assert set(spec) <= {"selector", "namespaceSelector", endpoints}, sorted(spec)
        assert spec.get("selector", {}).get("matchLabels"), f"{kind} selects nothing"
        for endpoint in spec.get(endpoints) or [None]:
            assert endpoint and endpoint.get("port") == "metrics", f"{kind}: {endpoint}"
            assert set(endpoint) <= {"port", "path", "interval"}, sorted(endpoint)
    elif kind == "VolumeSnapshot":
        spec = doc.get("spec") or {}
        assert set(spec) <= {"source", "volumeSnapshotClassName"}, sorted(spec)
        source = spec.get("source") or {}
        keys = set(source) & {"persistentVolumeClaimName", "volumeSnapshotContentName"}
        assert len(keys) == 1 and set(source) == keys, (
            "VolumeSnapshot.spec.source needs exactly one of persistentVolumeClaimName"
            f" and volumeSnapshotContentName, got {source}")


def validate_docs(docs: list[dict[str, Any]], where: str,
                  versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Validate each document at every version; return a list of failures."""
    kv = _kv()
    failures: list[str] = []
    assert docs, f"{where}: no Kubernetes objects"
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        label = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_KINDS or key in MONITOR_KINDS:
            try:
                check_crd(doc)
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
            continue
        for wanted in versions:
            version = _version(kv, wanted)
            minimum = MIN_VERSION.get(key)  # type: ignore[arg-type]
            if minimum and _older(version, minimum):
                continue
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                failures.append(f"{label} @ {version}: {path}: {exc.message}")
            except kv.SchemaNotFoundError:
                failures.append(f"{label} @ {version}: no schema for {key} (not a core kind"
                                " and not an expected CRD kind)")
    return failures


@pytest.mark.parametrize("layout", tools.LAYOUTS)
def test_kustomize_layout_validates(layout: str) -> None:
    docs = tools.kustomize_build(layout)
    assert not validate_docs(docs, f"deploy/{layout}"), "\n".join(
        validate_docs(docs, f"deploy/{layout}"))


@pytest.mark.parametrize("rendering", [r for r in tools.RENDERINGS if r.startswith("helm")])
def test_chart_rendering_validates(rendering: str) -> None:
    docs = tools.render(rendering)
    versions = ALL_K8S_VERSIONS if "everything" in rendering else K8S_VERSIONS
    failures = validate_docs(docs, rendering, versions)
    assert not failures, "\n".join(failures)


def test_the_rendering_with_every_value_has_the_monitors() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in tools.render("helm-everything")}
    assert MONITOR_KINDS <= kinds


def _apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return patch
    merged = dict(target)
    for key, value in patch.items():
        merged[key] = _apply_merge_patch(target.get(key), value)
    return merged


@pytest.mark.parametrize(
    "path", tools.example_files(), ids=lambda p: str(p.relative_to(tools.EXAMPLES)))
def test_example_validates(path) -> None:
    docs = tools.load_file(path)
    if path.name == "patch.yaml":
        # A complete PVC (validated below like every example) that, applied or used as a
        # patch, grows the PVC next to it and changes nothing else.
        pvcs = [d for d in tools.load_file(path.parent / "pvc-pod.yaml")
                if d["kind"] == "PersistentVolumeClaim"]
        assert len(pvcs) == 1 and len(docs) == 1
        patched = _apply_merge_patch(pvcs[0], docs[0])
        old = pvcs[0]["spec"]["resources"]["requests"]["storage"]
        new = patched["spec"]["resources"]["requests"]["storage"]
        assert _bytes(new) > _bytes(old), f"the patch must grow the PVC ({old} -> {new})"
        assert patched == _apply_merge_patch(pvcs[0], {"spec": {"resources": {
            "requests": {"storage": new}}}}), "the patch must change only the size"
    failures = validate_docs(docs, str(path.relative_to(tools.REPO)))
    assert not failures, "\n".join(failures)


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def test_only_expected_crd_kinds_are_shipped() -> None:
    """Anything not in the core schemas must be one of the snapshot CRD kinds."""
    kv = _kv()
    version = kv.latest_version()
    kinds = set()
    sources = [tools.load_file(p) for p in tools.example_files() if p.name != "patch.yaml"]
    sources += [tools.kustomize_build(layout) for layout in tools.LAYOUTS]
    for docs in sources:
        for doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                kinds.add((doc["apiVersion"], doc["kind"]))
            except kv.ValidationError:
                pass  # reported by the tests above
    assert kinds == CRD_KINDS


def test_validator_rejects_a_broken_manifest() -> None:
    """Guard against a validator that accepts anything: a typo'd field must fail."""
    docs = tools.load_file(tools.EXAMPLES / "pvc-pod.yaml")
    pod = next(d for d in docs if d["kind"] == "Pod")
    broken = _apply_merge_patch(pod, {"spec": {"containers": [
        {**pod["spec"]["containers"][0], "volumeMount": []}]}})
    assert validate_docs([broken], "broken pod")
    assert validate_docs([{**pod, "spec": {**pod["spec"], "restartPolicy": 3}}], "bad type")

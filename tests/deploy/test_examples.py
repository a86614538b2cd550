"""The examples refer to things that exist: our StorageClasses, VolumeSnapshotClass and
driver name, PVCs and snapshots defined next to them, the topology key the driver
reports. A wrong name here is a PVC that stays Pending forever."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy import tools

DRIVER = "loop.csi-py.io"
XFS_MIN = 300 << 20


def _base() -> list[dict]:
    docs = []
    for name in ("storageclasses.yaml", "volumesnapshotclass.yaml", "csidriver.yaml"):
        docs += tools.load_file(tools.DEPLOY / "base" / name)
    return docs


def _bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, q
    return int(m.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[m.group(2)]


def _example_docs(path: Path) -> list[dict]:
    """The documents of an example, together with the others of its directory (steps
    of one example: 01-..., 02-...)."""
    if path.parent == tools.EXAMPLES:
        return tools.load_file(path)
    return [d for p in sorted(path.parent.glob("*.yaml")) if p.name != "patch.yaml"
            for d in tools.load_file(p)]


EXAMPLES = [p for p in tools.example_files() if p.name != "patch.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(tools.EXAMPLES)))
def test_example_references_exist(path: Path) -> None:
    base = _base()
    assert next(d for d in base if d["kind"] == "CSIDriver")["metadata"]["name"] == DRIVER
    classes = {d["metadata"]["name"]: d for d in base if d["kind"] == "StorageClass"}
    snapclasses = {d["metadata"]["name"] for d in base if d["kind"] == "VolumeSnapshotClass"}
    docs = _example_docs(path)
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pvs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
    snaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "VolumeSnapshot"}
    templates = []
    for d in tools.load_file(path):
        if d["kind"] == "StatefulSet":
            templates += d["spec"]["volumeClaimTemplates"]
    for claim in list(pvcs.values()) + templates:
        spec = claim["spec"]
        sc = spec.get("storageClassName")
        size = _bytes(spec["resources"]["requests"]["storage"])
        if sc == "":
            assert spec.get("volumeName") in pvs, "a static PVC names its PV"
        else:
            assert sc in classes, f"unknown StorageClass {sc}"
            if classes[sc]["parameters"]["csi.storage.k8s.io/fstype"] == "xfs":
                assert size >= XFS_MIN, "xfs needs at least 300Mi"
        source = spec.get("dataSource")
        if source:
            if source["kind"] == "VolumeSnapshot":
                assert source["apiGroup"] == "snapshot.storage.k8s.io"
                assert source["name"] in snaps
                origin = pvcs[snaps[source["name"]]["spec"]["source"]["persistentVolumeClaimName"]]
            else:
                assert source["kind"] == "PersistentVolumeClaim"
                origin = pvcs[source["name"]]
                assert origin["spec"]["storageClassName"] == sc, "clones stay in one class"
            assert size >= _bytes(origin["spec"]["resources"]["requests"]["storage"])
    for snap in snaps.values():
        assert snap["spec"]["volumeSnapshotClassName"] in snapclasses
        assert snap["spec"]["source"]["persistentVolumeClaimName"] in pvcs
    for pv in pvs.values():
        assert pv["spec"]["csi"]["driver"] == DRIVER
        terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        keys = {e["key"] for t in terms for e in t["matchExpressions"]}
        assert keys == {f"topology.{DRIVER}/node"}, "the driver's topology key"
        assert pv["spec"]["storageClassName"] == ""
    for pod in _pods(tools.load_file(path)):
        for vol in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in pvcs
            if "csi" in vol:
                assert vol["csi"]["driver"] == DRIVER
                attrs = vol["csi"]["volumeAttributes"]
                assert _bytes(attrs["size"]) > 0
                assert attrs.get("fsType", "ext4") in ("ext4", "xfs", "btrfs")
        for c in pod["spec"]["containers"]:
            assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+", c["image"]), c["image"]


def _pods(docs: list[dict]) -> list[dict]:
    pods = [d for d in docs if d["kind"] == "Pod"]
    pods += [d["spec"]["template"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    return pods


def test_raw_block_example_uses_volume_devices() -> None:
    docs = tools.load_file(tools.EXAMPLES / "raw-block.yaml")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["volumeMode"] == "Block"
    (pod,) = _pods(docs)
    (c,) = pod["spec"]["containers"]
    assert c["volumeDevices"] and not c.get("volumeMounts")


def test_statefulset_example_verifies_its_data() -> None:
    docs = tools.load_file(tools.EXAMPLES / "statefulset.yaml")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    svc = next(d for d in docs if d["kind"] == "Service")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for needle in ("sha256sum -c", "VERIFIED", "WROTE", "exit 1", "$HOSTNAME"):
        assert needle in script


def test_static_example_is_a_template_to_fill_in() -> None:
    text = (tools.EXAMPLES / "static" / "pv-pvc.yaml").read_text()
    assert "REPLACE_WITH_VOLUME_ID" in text and "REPLACE_WITH_NODE_NAME" in text
    assert "csi-py volume --endpoint unix:///csi/csi.sock create" in text


def test_volume_attributes_class_uses_the_driver_mutable_parameters() -> None:
    (vac,) = tools.load_file(tools.EXAMPLES / "modify" / "volumeattributesclass.yaml")
    assert vac["driverName"] == DRIVER
    assert set(vac["parameters"]) <= {"directIO", "readAheadKiB"}
    assert vac["parameters"]["directIO"] in ("true", "false")
    assert 0 <= int(vac["parameters"]["readAheadKiB"]) <= 65536

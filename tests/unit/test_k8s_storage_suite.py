"""The k8s storage suite's files (tests/k8s-storage, hack/k8s-storage-summary): the driver
file declares exactly what the driver's code and deployment offer, and the summary of a
JUnit report counts and groups what it should."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

from csi_py.config import Config
from csi_py.domain.model import SUPPORTED_ACCESS_MODES, AccessMode
from csi_py.linux.fs import SUPPORTED_FS
from csi_py.rpc.controller import CONTROLLER_CAPABILITIES, RPC
from csi_py.rpc.identity import IdentityService
from csi_py.rpc.node import NODE_CAPABILITIES, NodeRPC

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tests" / "k8s-storage"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def driver() -> dict:
    return _load(SUITE / "driver.yaml")


@pytest.fixture(scope="module")
def csidriver() -> dict:
    return _load(REPO / "deploy" / "base" / "csidriver.yaml")


def _plugin_capabilities() -> list:
    class _Driver:  # GetPluginCapabilities reads nothing of the driver
        pass
    return list(IdentityService(_Driver()).GetPluginCapabilities(None, None).capabilities)


def test_name_and_topology_key_are_the_drivers(driver, csidriver):
    info = driver["DriverInfo"]
    assert info["Name"] == csidriver["metadata"]["name"]
    config = Config(endpoint="unix:///csi/csi.sock", node_id="n", pool="/pool",
                    driver_name=info["Name"])
    assert info["TopologyKeys"] == [config.topology_key]


def test_fs_types_are_the_drivers(driver):
    declared = set(driver["DriverInfo"]["SupportedFsType"]) - {""}
    assert declared == set(SUPPORTED_FS)


def test_every_declared_capability_is_backed(driver, csidriver):
    caps = driver["DriverInfo"]["Capabilities"]
    plugin = {c.service.type for c in _plugin_capabilities() if c.HasField("service")}
    expansion = {c.volume_expansion.type for c in _plugin_capabilities()
                 if c.HasField("volume_expansion")}
    from csi_py._proto import csi_pb2 as pb
    svc = pb.PluginCapability.Service
    online = pb.PluginCapability.VolumeExpansion.ONLINE
    backing = {
        "persistence": True,
        "block": True,
        "exec": True,
        "fsGroup": csidriver["spec"]["fsGroupPolicy"] == "File",
        "multipods": AccessMode.SINGLE_NODE_MULTI_WRITER in SUPPORTED_ACCESS_MODES
        and RPC.SINGLE_NODE_MULTI_WRITER in CONTROLLER_CAPABILITIES,
        "snapshotDataSource": RPC.CREATE_DELETE_SNAPSHOT in CONTROLLER_CAPABILITIES,
        "groupSnapshot": svc.GROUP_CONTROLLER_SERVICE in plugin,
        "pvcDataSource": RPC.CLONE_VOLUME in CONTROLLER_CAPABILITIES,
        "controllerExpansion": RPC.EXPAND_VOLUME in CONTROLLER_CAPABILITIES,
        "nodeExpansion": NodeRPC.EXPAND_VOLUME in NODE_CAPABILITIES,
        "onlineExpansion": online in expansion,
        "offlineExpansion": RPC.EXPAND_VOLUME in CONTROLLER_CAPABILITIES,
        "topology": svc.VOLUME_ACCESSIBILITY_CONSTRAINTS in plugin,
        "capacity": RPC.GET_CAPACITY in CONTROLLER_CAPABILITIES
        and csidriver["spec"]["storageCapacity"] is True,
        "singleNodeVolume": True,
        "readWriteOncePod": AccessMode.SINGLE_NODE_SINGLE_WRITER in SUPPORTED_ACCESS_MODES,
        "volumeLimits": True,  # checked against the overlay below
        "RWX": AccessMode.MULTI_NODE_MULTI_WRITER in SUPPORTED_ACCESS_MODES,
        "capReadOnlyMany": AccessMode.MULTI_NODE_READER_ONLY in SUPPORTED_ACCESS_MODES,
        "volumeMountGroup": False,  # no VOLUME_MOUNT_GROUP node capability
        "multiplePVsSameID": False,
    }
    assert set(caps) == set(backing), "a capability without a check here"
    wrong = {name: caps[name] for name in caps if caps[name] != backing[name]}
    assert not wrong, f"declared differently from what the driver offers: {wrong}"
    assert NodeRPC.VOLUME_MOUNT_GROUP not in NODE_CAPABILITIES


def test_volume_limits_are_set_by_the_suites_deployment(driver):
    text = (REPO / "tests" / "e2e" / "overlays" / "k8s-storage" / "kustomization.yaml").read_text()
    limits = re.findall(r"--max-volumes-per-node=(\d+)", text)
    assert driver["DriverInfo"]["Capabilities"]["volumeLimits"] and limits
    assert int(limits[0]) > 0


def test_inline_volumes_match_the_csidriver(driver, csidriver):
    assert driver["InlineVolumes"], "inline ephemeral volumes are declared"
    assert "Ephemeral" in csidriver["spec"]["volumeLifecycleModes"]
    for volume in driver["InlineVolumes"]:
        assert set(volume["Attributes"]) <= {"size", "fsType"}


def test_storage_class_file(driver, csidriver):
    sc = _load(REPO / driver["StorageClass"]["FromFile"])
    assert sc["kind"] == "StorageClass"
    assert sc["provisioner"] == csidriver["metadata"]["name"]
    assert sc["allowVolumeExpansion"] is True
    # Only the key the suite's patterns replace: any other fs parameter would contradict
    # the xfs and ext4 patterns' fs_type.
    fs_keys = {k for k in sc["parameters"] if k.lower().endswith("fstype")}
    assert fs_keys == {"csi.storage.k8s.io/fstype"}
    assert sc["parameters"]["csi.storage.k8s.io/fstype"] in SUPPORTED_FS


def test_snapshot_and_attributes_classes_exist(driver):
    snap = _load(REPO / "deploy" / "base" / "volumesnapshotclass.yaml")
    assert driver["SnapshotClass"]["FromExistingClassName"] == snap["metadata"]["name"]
    vac = _load(REPO / driver["VolumeAttributesClass"]["FromFile"])
    assert vac["driverName"] == driver["DriverInfo"]["Name"]
    from csi_py.core.mutable import check_mutable
    assert check_mutable(vac["parameters"], "the suite's class") == vac["parameters"]
    assert RPC.MODIFY_VOLUME in CONTROLLER_CAPABILITIES


def test_default_selection_is_unique_and_annotated():
    lines = (SUITE / "default.txt").read_text().splitlines()
    tests = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(tests) == len(set(tests)) and tests
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"no note of what {line!r} covers"
            assert line.startswith("[Testpattern: ")


def test_stress_options_are_ones_the_suite_runs_with(driver):
    """The stress suites skip without their options and fail on a count below 1."""
    info = driver["DriverInfo"]
    options = {
        "StressTestOptions": ("NumPods", "NumRestarts"),
        "VolumeSnapshotStressTestOptions": ("NumPods", "NumSnapshots"),
        "VolumeModifyStressTestOptions": ("NumPods",),
    }
    for name, fields in options.items():
        assert set(info[name]) == set(fields), name
        assert all(isinstance(info[name][f], int) and info[name][f] > 0 for f in fields), name


# --- hack/k8s-storage-e2e's selection -------------------------------------------------------

_SCRIPT = REPO / "hack" / "k8s-storage-e2e"
_PFX = "External Storage [Driver: loop.csi-py.io] "
# Test names as e2e.test v1.34.4 -list-tests prints them for this driver file, and the
# part of --full that must run each.
_PART_OF = {
    "[Testpattern:  (delete policy)] volumegroupsnapshottable [Feature:volumegroupsnapshot] "
    "VolumeGroupSnapshottable  should create snapshots for multiple volumes in a pod": "snapshots",
    "[Testpattern: Dynamic Snapshot (retain policy)] snapshottable-stress "
    "[Feature:VolumeSnapshotDataSource] should support snapshotting of many volumes repeatedly "
    "[Slow] [Serial]": "snapshots",
    "[Testpattern: Dynamic Snapshot (delete policy)] snapshottable "
    "[Feature:VolumeSnapshotDataSource] volume snapshot controller  should check snapshot "
    "fields, check restore correctly works, "
    "check deletion (ephemeral)": "snapshots",
    "[Testpattern: Dynamic PV (block volmode)] volume-modify-stress "
    "[FeatureGate:VolumeAttributesClass] [Feature:VolumeAttributesClass] multiple pods should "
    "provision volumes with volumeAttributesClass [Slow]": "expand-ephemeral",
    "[Testpattern: Dynamic PV (default fs)] volume-stress multiple pods should access different "
    "volumes repeatedly [Slow] [Serial]": "stress",
}


def _skip_pattern() -> str:
    match = re.search(r"^SKIP='(.*)'$", _SCRIPT.read_text(), re.M)
    assert match, "hack/k8s-storage-e2e has no SKIP"
    return match.group(1)


def test_full_parts_select_the_group_snapshot_and_stress_tests():
    import subprocess
    listing = subprocess.run(["bash", str(_SCRIPT), "--list"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    parts = dict(line.split(None, 1) for line in listing.splitlines())
    skip = re.compile(_skip_pattern())
    for name, part in _PART_OF.items():
        chosen = [p for p, focus in parts.items() if re.search(focus, _PFX + name)]
        assert chosen == [part], (name, chosen)
        assert not skip.search(_PFX + name), f"--skip drops {name!r}"


def test_skip_drops_only_the_modify_stress_test_that_needs_immediate_binding():
    skip = re.compile(_skip_pattern())
    stress = ("[Testpattern: Dynamic PV (default fs)] volume-modify-stress "
              "[FeatureGate:VolumeAttributesClass] [Feature:VolumeAttributesClass] multiple pods "
              "should {} [Slow]")
    assert skip.search(_PFX + stress.format("modify volumes with a different "
                                            "volumeAttributesClass"))
    assert not skip.search(_PFX + stress.format("provision volumes with volumeAttributesClass"))
    # The volume-modify suite's own test of a changed class still runs.
    assert not skip.search(_PFX + "[Testpattern: Dynamic PV (default fs)] volume-modify "
                           "[FeatureGate:VolumeAttributesClass] [Feature:VolumeAttributesClass] "
                           "should modify volume that already has a VAC")


def test_every_feature_left_out_is_in_the_docs():
    """--skip leaves out only what docs/conformance.md's table lists, and that table only
    what --skip leaves out."""
    left_out = set(_skip_pattern().replace("\\", "").split("|"))
    docs = (REPO / "docs" / "conformance.md").read_text()
    table = docs.split("Left out by the selection", 1)[1].split("\n\n", 2)[1]
    rows = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    assert rows == left_out


# --- hack/k8s-storage-summary -------------------------------------------------------------

def _summary_module():
    path = REPO / "hack" / "k8s-storage-summary"
    loader = importlib.machinery.SourceFileLoader("k8s_storage_summary", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


_DRV = "[It] External Storage [Driver: loop.csi-py.io] "
_NO_PRE = "skipped - Driver loop.csi-py.io doesn't support PreprovisionedPV -- skipping"
# (name, status, inner element) of each testcase of a report like ginkgo's.
CASES = [
    ("[SynchronizedBeforeSuite]", "passed", ""),
    (_DRV + "[Testpattern: Dynamic PV (default fs)] volumes should store data", "passed", ""),
    (_DRV + "[Testpattern: Dynamic PV (ext4)] volumes should store data", "failed",
     '<failure message="timed out waiting for pod-1234">long text</failure>'),
    (_DRV + "[Testpattern: Pre-provisioned PV (ext4)] volumes should store data", "skipped",
     f'<skipped message="{_NO_PRE}"/>'),
    (_DRV + "[Testpattern: Pre-provisioned PV (xfs)] volumes should store data", "skipped",
     f'<skipped message="{_NO_PRE}"/>'),
    ("[It] [sig-node] something else", "skipped", '<skipped message="skipped"/>'),
    ("[ReportAfterSuite] Kubernetes e2e suite report", "passed", ""),
]


def _report(cases) -> str:
    body = "".join(f'<testcase name="{n}" status="{st}">{inner}</testcase>\n'
                   for n, st, inner in cases)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="e2e">\n'
            + body + "</testsuite></testsuites>\n")


REPORT = _report(CASES)


def test_summary_counts_and_groups(tmp_path):
    mod = _summary_module()
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    summary = mod.summarize([str(report)])
    assert summary.passed == ["[Testpattern: Dynamic PV (default fs)] volumes should store data"]
    assert [name for name, _ in summary.failed] == [
        "[Testpattern: Dynamic PV (ext4)] volumes should store data"]
    assert summary.ran == 2 and summary.not_selected == 1
    assert summary.skip_reasons == {
        "Driver loop.csi-py.io doesn't support PreprovisionedPV -- skipping": 2}
    text = mod.render(summary)
    assert text.splitlines()[0] == ("ran 2, passed 1, failed 1, skipped while running 2"
                                    " (not selected: 1)")
    assert mod.main([str(report)]) == 1


def test_summary_passes_only_with_a_pass_and_no_failure(tmp_path):
    mod = _summary_module()
    report = tmp_path / "junit.xml"
    report.write_text(_report([(n, "passed" if st == "failed" else st,
                                "" if st == "failed" else inner) for n, st, inner in CASES]))
    assert mod.main([str(report)]) == 0
    empty = tmp_path / "empty.xml"
    empty.write_text("<testsuites><testsuite/></testsuites>")
    assert mod.main([str(empty)]) == 2

"""After every test and the deployment itself are deleted, nothing of csi-py is left on the
local cluster's node: no PersistentVolume or VolumeAttachment of the driver, no volume or
snapshot file in the pool, no loop device backed by one, no mount of a volume.

Runs only as hack/e2e's last step (CSI_PY_E2E_LAYOUT=teardown), on the machine that is the
node, once csi-py's DaemonSet is gone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.e2e.cluster import DRIVER

POOL = Path("/var/lib/csi-py/pool")  # the manifests' hostPath
KUBELET = "/var/lib/kubelet"

pytestmark = pytest.mark.skipif(os.environ.get("CSI_PY_E2E_LAYOUT") != "teardown",
                                reason="hack/e2e's last step, after csi-py is deleted")


def test_no_kubernetes_object_of_the_driver_is_left() -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_kube_config()
    api = client.ApiClient()
    core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
    pvs = [pv.metadata.name for pv in core.list_persistent_volume().items
           if pv.spec.csi and pv.spec.csi.driver == DRIVER]
    assert not pvs, f"PersistentVolumes of {DRIVER} left: {pvs}"
    attachments = [a.metadata.name for a in storage.list_volume_attachment().items
                   if a.spec.attacher == DRIVER]
    assert not attachments, f"VolumeAttachments left: {attachments}"
    try:
        storage.read_csi_driver(DRIVER)
        pytest.fail(f"CSIDriver {DRIVER} is still installed")
    except ApiException as exc:
        assert exc.status == 404


def test_no_volume_file_is_left_in_the_pool() -> None:
    left = sorted(str(p) for sub in ("volumes", "snapshots") if (POOL / sub).is_dir()
                  for p in (POOL / sub).iterdir())
    assert not left, f"volume or snapshot files left in the pool: {left}"


def test_no_loop_device_of_the_pool_is_left() -> None:
    left = []
    for dev in os.listdir("/sys/block"):
        backing = Path("/sys/block", dev, "loop", "backing_file")
        # A device attached by a node plugin container that is gone names its file from
        # that container's bind mount of the pool: /pool/volumes/<id>.img.
        if backing.exists() and re.fullmatch(
                r"(/var/lib/csi-py)?/pool/(volumes|snapshots)/[^/]+\.img( \(deleted\))?",
                backing.read_text().removesuffix("\n")):
            left.append(f"/dev/{dev} -> {backing.read_text().strip()}")
    assert not left, f"loop devices of the pool left: {left}"


def test_no_volume_mount_is_left() -> None:
    left = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = line.split()[4]
            if (target.startswith(f"{KUBELET}/plugins/kubernetes.io/csi/")
                    or (target.startswith(f"{KUBELET}/pods/")
                        and "/volumes/kubernetes.io~csi/" in target)
                    or target.startswith(f"{KUBELET}/plugins/kubernetes.io~csi")):
                left.append(target)
            source = line.split(" - ")[1].split()[1] if " - " in line else ""
            if source.startswith("/dev/loop") and "/var/lib/kubelet" in target:
                left.append(f"{source} on {target}")
    assert not left, f"volume mounts left: {left}"

"""A small layer over the `kubernetes` client for the end-to-end tests: connect (or
explain why not), create objects from the example files in a namespace, and wait for
what a user waits for, printing the events when the wait times out."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DRIVER = os.environ.get("CSI_PY_DRIVER_NAME", "loop.csi-py.io")
DRIVER_NAMESPACE = os.environ.get("CSI_PY_NAMESPACE", "csi-py")
# Waits are generous: kind on a laptop pulls images and formats filesystems.
TIMEOUT = float(os.environ.get("CSI_PY_E2E_TIMEOUT", "300"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def no_cluster(message: str) -> None:
    """Skip: there is no cluster to test. hack/kind-demo, which has just made one, sets
    CSI_PY_E2E_REQUIRE_CLUSTER=1 so that this is a failure there instead."""
    if os.environ.get("CSI_PY_E2E_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"CSI_PY_E2E_REQUIRE_CLUSTER=1: {message}", pytrace=False)
    pytest.skip(message)


class Cluster:
    """Clients for one cluster, and the test namespace's name."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client, dynamic

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.apiext = client.ApiextensionsV1Api(api_client)
        self.dynamic = dynamic.DynamicClient(api_client)
        self.namespace = ""
        # Namespaces of finished tests whose deletion is still under way (see settle).
        self.deleting: list[str] = []

    # --- objects -----------------------------------------------------------------------

    def create(self, doc: dict[str, Any], namespace: str | None = None) -> Any:
        resource = self.dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        if resource.namespaced:
            return resource.create(body=doc, namespace=namespace or self.namespace)
        return resource.create(body=doc)

    def apply_example(self, relative: str, transform: Callable[[str], str] | None = None) -> list:
        """Create every object of examples/<relative> in the test namespace."""
        text = (EXAMPLES / relative).read_text()
        if transform:
            text = transform(text)
        docs = [d for d in yaml.safe_load_all(text) if d]
        return [self.create(d) for d in docs]

    def crd_exists(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.apiext.read_custom_resource_definition(name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # --- waiting -----------------------------------------------------------------------

    def settle(self) -> None:
        """Wait until the namespaces of earlier tests are gone and so are their volumes
        (PersistentVolumes of this driver bound to claims there), for a test that counts
        the pool's space or disrupts the node. A test's namespace is deleted in the
        background while the next test runs: that costs most tests nothing."""
        from kubernetes.client.exceptions import ApiException

        def gone() -> bool:
            for name in list(self.deleting):
                try:
                    self.core.read_namespace(name)
                    return False
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            return not any(pv.spec.claim_ref and pv.spec.claim_ref.namespace in self.deleting
                           for pv in self.core.list_persistent_volume().items
                           if pv.spec.csi and pv.spec.csi.driver == DRIVER)

        if self.deleting:
            self.wait(f"earlier tests' namespaces {self.deleting} and their volumes gone", gone)
            self.deleting.clear()

    def wait(self, what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        """Poll `check` until it returns something truthy; on time-out fail with the
        namespace's recent events, which usually say why."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except Exception as exc:  # noqa: BLE001 - report the last one on time-out
                last_error = exc
            time.sleep(1)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}"
                    f"{f' (last error: {last_error})' if last_error else ''}\n"
                    f"{self.events()}", pytrace=False)

    def events(self) -> str:
        try:
            items = self.core.list_namespaced_event(self.namespace).items
        except Exception as exc:  # noqa: BLE001
            return f"(events unavailable: {exc})"
        items.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
        lines = [f"  {e.type} {e.involved_object.kind}/{e.involved_object.name}: "
                 f"{e.reason}: {e.message}" for e in items[-25:]]
        return "recent events:\n" + "\n".join(lines)

    def pvc_bound(self, name: str) -> Any:
        return self.wait(f"PVC {name} Bound", lambda: (
            pvc := self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
        ).status.phase == "Bound" and pvc)

    def statefulset_ready(self, name: str, replicas: int) -> Any:
        return self.wait(f"StatefulSet {name} with {replicas} ready replicas", lambda: (
            self.apps.read_namespaced_stateful_set(name, self.namespace)
            .status.ready_replicas or 0) == replicas)

    def pod_ready(self, name: str) -> Any:
        def ready():
            pod = self.core.read_namespaced_pod(name, self.namespace)
            if pod.status.phase == "Failed":
                pytest.fail(f"pod {name} failed:\n{self.logs(name)}\n{self.events()}",
                            pytrace=False)
            conditions = pod.status.conditions or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions) and pod
        return self.wait(f"pod {name} Ready", ready)

    def logs(self, pod: str, container: str | None = None) -> str:
        kwargs = {"container": container} if container else {}
        return self.core.read_namespaced_pod_log(pod, self.namespace, **kwargs)

    def exec(self, pod: str, command: list[str], namespace: str | None = None,
             container: str | None = None) -> str:
        from kubernetes.stream import stream

        kwargs = {"container": container} if container else {}
        return stream(self.core.connect_get_namespaced_pod_exec, pod,
                      namespace or self.namespace, command=command, stderr=True,
                      stdin=False, stdout=True, tty=False, **kwargs)


def connect() -> Cluster:
    """A Cluster for $KUBECONFIG (or ~/.kube/config), or skip saying why not."""
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not any(os.path.exists(p) for p in kubeconfig.split(os.pathsep) if p):
        no_cluster(f"no cluster: no kubeconfig at {kubeconfig} (set KUBECONFIG; "
                   "hack/kind-demo creates a kind cluster and runs these tests)")
    try:
        from kubernetes import client, config
    except ImportError as exc:
        message = f"the kubernetes client is not installed ({exc}): pip install kubernetes"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        config.load_kube_config()
        api_client = client.ApiClient()
        client.VersionApi(api_client).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable cluster
        no_cluster(f"no cluster reachable with {kubeconfig}: {exc}")
    cluster = Cluster(api_client)
    try:
        cluster.storage.read_csi_driver(DRIVER)
    except Exception as exc:  # noqa: BLE001
        no_cluster(f"CSIDriver {DRIVER} is not installed in this cluster ({exc}); deploy "
                   "csi-py first: kubectl apply -k deploy/single-node")
    return cluster


def new_namespace(cluster: Cluster) -> str:
    from kubernetes import client

    name = f"csi-py-e2e-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"app.kubernetes.io/part-of": "csi-py-e2e"})))
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    """Start deleting the namespace; Cluster.settle waits until it is gone (with its
    volumes). Pods go with a 1 s grace period: the examples' busybox shells ignore
    SIGTERM, and without it every pod would take its full 30 s to go. Not with 0: a
    pod must stay until kubelet has unpublished its volumes, or the volumes' deletion
    would race their unpublish."""
    from kubernetes.client.exceptions import ApiException

    try:
        for pod in cluster.core.list_namespaced_pod(name).items:
            cluster.core.delete_namespaced_pod(pod.metadata.name, name, grace_period_seconds=1)
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        cluster.core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    cluster.deleting.append(name)

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, connect, delete_namespace, new_namespace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "once: a test of the cluster, kubelet or the driver"
                            " itself, not of a layout's manifests and sidecars: hack/e2e"
                            " runs it in its first pass only")


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[Cluster]:
    cluster = connect()
    yield cluster
    # The run ends as it began: no namespace or volume of the tests left.
    cluster.settle()


@pytest.fixture
def settled(cluster_session: Cluster) -> None:
    """For a test that counts the pool's space or disrupts the node: the earlier tests'
    namespaces and volumes are gone first."""
    cluster_session.settle()


@pytest.fixture
def cluster(cluster_session: Cluster) -> Iterator[Cluster]:
    """The cluster, with a fresh namespace for this test, deleted afterwards (in the
    background: see Cluster.settle)."""
    cluster_session.namespace = new_namespace(cluster_session)
    try:
        yield cluster_session
    finally:
        delete_namespace(cluster_session, cluster_session.namespace)

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, connect, delete_namespace, new_namespace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "once: a cluster-level test hack/e2e runs in its first"
                            " pass only, not for every layout")


@pytest.fixture(scope="session")
def cluster_session() -> Cluster:
    return connect()


@pytest.fixture
def cluster(cluster_session: Cluster) -> Iterator[Cluster]:
    """The cluster, with a fresh namespace for this test, deleted afterwards."""
    cluster_session.namespace = new_namespace(cluster_session)
    try:
        yield cluster_session
    finally:
        delete_namespace(cluster_session, cluster_session.namespace)

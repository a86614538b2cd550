"""Prometheus metrics: RPC counts and latency by method and code, and the pool's state
(capacity, usage, volumes, snapshots, attached loop devices) read at scrape time.

Each Server owns its own registry, so several drivers in one process (tests) never
share counters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from csi_py.core.identity import volume_of_device
from csi_py.linux import files
from csi_py.observability.health_metrics import HealthCollector

if TYPE_CHECKING:
    from csi_py.core.driver import Driver

log = logging.getLogger(__name__)

# RPC latencies span 100 µs (a publish) to minutes (a copy-based snapshot).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class PoolCollector(Collector):
    """Computes the pool gauges when Prometheus scrapes, never in the RPC path."""

    NAMES = (
        ("csi_py_pool_capacity_bytes", "Size of the filesystem holding the pool"),
        ("csi_py_pool_available_bytes", "Free space in the pool's filesystem"),
        ("csi_py_pool_provisioned_bytes",
         "Sum of all volumes' capacities (thin volumes promise it)"),
        ("csi_py_volumes", "Volumes in the catalog"),
        ("csi_py_snapshots", "Snapshots in the catalog"),
        ("csi_py_attached_loop_devices", "Loop devices attached to this pool's volumes"),
        ("csi_py_ready", "1 once start-up reconciliation is done"),
    )

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names, without computing them: the registry asks at registration,
        and without a describe() it would run a full collect() then (at start-up)."""
        for name, doc in self.NAMES:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        driver = self.driver
        try:
            total, free = files.space(driver.pool.volumes_dir)
        except OSError:
            return
        yield GaugeMetricFamily("csi_py_pool_capacity_bytes",
                                "Size of the filesystem holding the pool", value=total)
        yield GaugeMetricFamily("csi_py_pool_available_bytes",
                                "Free space in the pool's filesystem", value=free)
        yield GaugeMetricFamily("csi_py_pool_provisioned_bytes",
                                "Sum of all volumes' capacities (thin volumes promise it)",
                                value=driver.catalog.provisioned_bytes())
        yield GaugeMetricFamily("csi_py_volumes", "Volumes in the catalog",
                                value=driver.catalog.volume_count())
        yield GaugeMetricFamily("csi_py_snapshots", "Snapshots in the catalog",
                                value=driver.catalog.snapshot_count())
        attached = sum(1 for dev in driver.host.loops.list_attached()
                       if volume_of_device(driver.host, driver.pool, dev) is not None)
        yield GaugeMetricFamily("csi_py_attached_loop_devices",
                                "Loop devices attached to this pool's volumes", value=attached)
        yield GaugeMetricFamily("csi_py_ready", "1 once start-up reconciliation is done",
                                value=1 if driver.ready else 0)


class Metrics:
    """The driver's registry, its RPC instruments, and (optionally) the HTTP endpoint."""

    def __init__(self, driver: Driver) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("csi_py_rpc_requests", "CSI calls answered, by method and code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("csi_py_rpc_duration_seconds", "Time to answer a CSI call",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(PoolCollector(driver))
        self.registry.register(HealthCollector(driver))
        self._http: object | None = None
        self._thread: threading.Thread | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, address: str) -> int:
        """Serve /metrics on `address` ("host:port", ":port"); returns the bound port.
        Raises OSError when the port cannot be bound."""
        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), addr=host or "0.0.0.0",
                                           registry=self.registry)
        self._http, self._thread = server, thread
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host or "0.0.0.0", bound)
        return int(bound)

    def close(self) -> None:
        """Stop the HTTP endpoint. Idempotent."""
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http.server_close()  # type: ignore[attr-defined]
            self._http = None

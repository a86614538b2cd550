"""Health as Prometheus metrics, computed at scrape time from the same signals as the
CSI health RPCs (core/health_conditions.py): one series per volume condition and per
pool condition (value 1 while the condition holds), and the pool's inode counts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from csi_py.domain.errors import DriverError
from csi_py.linux.pool_state import pool_fs_state

if TYPE_CHECKING:
    from csi_py.core.driver import Driver

log = logging.getLogger(__name__)


class HealthCollector(Collector):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names, without computing them. The registry asks at registration;
        without a describe() it would collect(), i.e. health-check every volume, at
        start-up."""
        yield GaugeMetricFamily("csi_py_volume_condition", "", labels=["volume_id", "type",
                                                                        "reason"])
        yield GaugeMetricFamily("csi_py_pool_condition", "", labels=["type", "reason"])
        for name in ("csi_py_pool_inodes", "csi_py_pool_free_inodes",
                     "csi_py_pool_read_only"):
            yield GaugeMetricFamily(name, "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.driver.health_report
        volumes = GaugeMetricFamily(
            "csi_py_volume_condition",
            "1 for each health condition a volume has (type, CamelCase reason)",
            labels=["volume_id", "type", "reason"])
        try:
            token = ""
            while True:
                page = report.list_page(0, token)
                for vol, conditions in page.entries:
                    for c in conditions:
                        volumes.add_metric([vol.id, c.type.value, c.reason], 1)
                token = page.next_token
                if not token:
                    break
        except DriverError as exc:  # a listing raced with deletions: report what we have
            log.debug("volume health metrics: %s", exc)
        yield volumes
        pool = GaugeMetricFamily(
            "csi_py_pool_condition",
            "1 for each health condition of the pool (type, CamelCase reason)",
            labels=["type", "reason"])
        for sc in report.storage_conditions():
            pool.add_metric([sc.type.value, sc.reason], 1)
        yield pool
        try:
            state = pool_fs_state(self.driver.pool.volumes_dir)
        except OSError:
            return
        yield GaugeMetricFamily("csi_py_pool_inodes", "Inodes of the pool's filesystem"
                                " (0 when it has no fixed count)", value=state.total_inodes)
        yield GaugeMetricFamily("csi_py_pool_free_inodes", "Free inodes of the pool's"
                                " filesystem", value=state.free_inodes)
        yield GaugeMetricFamily("csi_py_pool_read_only", "1 when the pool's filesystem is"
                                " read-only", value=1 if state.read_only else 0)

"""The driver: config, catalog, pool, host and the cores wired together; start-up
(reconciliation, core/reconcile.py) and readiness."""

from __future__ import annotations

import logging
import threading

from csi_py.config import Config
from csi_py.core.controller import ControllerCore
from csi_py.core.ephemeral import EphemeralVolumes
from csi_py.core.group_snapshots import GroupSnapshots
from csi_py.core.health import HealthChecker
from csi_py.core.health_conditions import HealthReporter
from csi_py.core.locks import KeyedTryLock
from csi_py.core.node import NodeCore
from csi_py.core.node_calls import NodeCalls
from csi_py.core.pool import Pool
from csi_py.core.rebuild import open_catalog
from csi_py.core.reconcile import ReconcileReport, reconcile
from csi_py.core.snapshot_metadata import SnapshotMetadataCore
from csi_py.core.snapshots import SnapshotCore
from csi_py.domain.errors import Unavailable
from csi_py.linux import Host, filesystems
from csi_py.state.records import Records

log = logging.getLogger(__name__)


class Driver:
    """Everything a servicer needs. Construct, then call start() before serving."""

    def __init__(self, config: Config, host: Host) -> None:
        self.config = config
        self.host = host
        self.pool = Pool(config.pool)
        self.pool.prepare()
        if not self.pool.keep_catalog_reserve():
            log.warning("pool %s is full: no space for the catalog's reserve", config.pool)
        self.catalog, self.catalog_moved_to = open_catalog(self.pool, self._release_reserve)
        self.records = Records(self.pool.records_dir)
        self.locks = KeyedTryLock()
        self.controller = ControllerCore(config, self.catalog, self.pool, host, self.locks)
        self.node = NodeCore(config, self.catalog, self.pool, host, self.locks, self.controller)
        self.snapshots = SnapshotCore(config, self.catalog, self.pool, self.locks,
                                      self.controller.space, self.controller.volumes,
                                      self.controller.capturer)
        self.groups = GroupSnapshots(config, self.catalog, self.pool, self.locks,
                                     self.controller.space, self.controller.capturer,
                                     self.snapshots)
        self.snapshot_metadata = SnapshotMetadataCore(self.catalog, self.pool, config)
        self.health = HealthChecker(config, self.catalog, self.pool, host, self.node.kernel)
        self.health_report = HealthReporter(self.health, self.controller.volumes)
        self.ephemeral = EphemeralVolumes(self.catalog, self.pool, self.controller.volumes,
                                          self.node)
        self.node_calls = NodeCalls(self.node, self.ephemeral, self.controller,
                                    self.health_report)
        self._ready = threading.Event()
        self.last_reconcile: ReconcileReport | None = None

    def _release_reserve(self) -> bool:
        """The catalog's on_full hook: give the reserve's space to the catalog."""
        if not self.pool.release_catalog_reserve():
            return False
        log.warning("pool %s is full; released the catalog's reserve so the catalog can"
                    " still be written. Free space in the pool", self.pool.root)
        return True

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def require_ready(self) -> None:
        """Raise Unavailable until start-up reconciliation has finished."""
        if not self._ready.is_set():
            raise Unavailable("csi-py is still reconciling its catalog with the kernel; retry")

    def missing_tools(self) -> list[str]:
        """Tools the configured filesystems may run (the filesystem table's, e2fsck
        included) that are not installed. Idempotent."""
        return filesystems.missing_tools(self.config.filesystems)

    def start(self) -> ReconcileReport:
        """Reconcile the catalog with the kernel, then mark the driver ready. Idempotent."""
        report = reconcile(self.catalog, self.pool, self.records, self.host,
                           self.node.kernel, self.catalog_moved_to)
        self.last_reconcile = report
        log.info(report.summary())
        self._ready.set()
        return report

    def close(self) -> None:
        self._ready.clear()
        self.catalog.close()

"""The driver: config, catalog, pool, host and the cores wired together, plus start-up
reconciliation and readiness."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field, replace

from csi_py.config import Config
from csi_py.core.controller import ControllerCore
from csi_py.core.ephemeral import EphemeralVolumes
from csi_py.core.group_snapshots import GroupSnapshots
from csi_py.core.health import HealthChecker
from csi_py.core.health_conditions import HealthReporter
from csi_py.core.identity import backs, volume_of_device
from csi_py.core.locks import KeyedTryLock
from csi_py.core.node import NodeCore
from csi_py.core.node_calls import NodeCalls
from csi_py.core.pool import Pool
from csi_py.core.rebuild import Findings, PoolListing, RebuildReport, open_catalog, rebuild
from csi_py.core.snapshot_metadata import SnapshotMetadataCore
from csi_py.core.snapshots import SnapshotCore
from csi_py.domain.errors import Unavailable
from csi_py.domain.model import AccessType, SnapshotState, Volume, VolumeState
from csi_py.domain.snapshot_ids import file_key
from csi_py.linux import Host, files, filesystems
from csi_py.linux.errors import LinuxError
from csi_py.state.records import Records

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport(Findings):
    """What start-up reconciliation found and did; logged and kept for diagnostics."""

    rolled_back_creates: list[str] = field(default_factory=list)
    finished_creates: list[str] = field(default_factory=list)
    finished_deletes: list[str] = field(default_factory=list)
    rolled_back_snapshots: list[str] = field(default_factory=list)
    # Loop devices on pool files that no volume claims (a deleted image, a volume
    # the catalog and the records do not know): never detached, only reported.
    left_alone: list[str] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)
    unknown_images: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rebuild: RebuildReport = field(default_factory=RebuildReport)

    def summary(self) -> str:
        counts = self.counts()
        counts.update(self.rebuild.counts())
        return "reconciled: " + " ".join(f"{k}={n}" for k, n in counts.items())


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
        report = reconcile(self)
        self.last_reconcile = report
        log.info(report.summary())
        self._ready.set()
        return report

    def close(self) -> None:
        self._ready.clear()
        self.catalog.close()


def reconcile(driver: Driver) -> ReconcileReport:
    """Bring the catalog and the kernel into agreement after a start or a crash.

    - volumes left CREATING are rolled back (file, record and row removed): the
      caller never got an answer and will retry CreateVolume; unless their record is
      written (a create's commit point, after its image is complete): those are
      finished (READY), for the caller may have had its answer;
    - volumes left DELETING are finished;
    - snapshots and group snapshots left CREATING or DELETING are removed (a caller
      that never got an answer retries; one that asked for a delete wanted it gone);
    - what the catalog lacks is rebuilt from the pool's records and the kernel
      (core/rebuild.py): volumes, snapshots, and stagings of attached devices;
    - temp files from interrupted creates are removed;
    - loop devices and image files no volume claims are reported, never detached or
      deleted (they may be a user's data, or a pod's device, from a lost catalog).
    Staged volumes are left as they are; kubelet re-stages after a reboot.
    """
    report = ReconcileReport()
    catalog, pool, host, records = driver.catalog, driver.pool, driver.host, driver.records
    if driver.catalog_moved_to:
        report.rebuild.catalog_moved_to.append(driver.catalog_moved_to)
    for vol in catalog.volumes_in_state(VolumeState.CREATING):
        if _create_committed(records, pool, vol):
            catalog.set_volume_state(vol.id, VolumeState.READY)
            report.finished_creates.append(vol.id)
            continue
        _quietly(report, files.remove_file, pool.image_path(vol.id))
        _quietly(report, records.remove, vol.id)
        catalog.delete_volume(vol.id)
        report.rolled_back_creates.append(vol.id)
    for vol in catalog.volumes_in_state(VolumeState.DELETING):
        _quietly(report, files.remove_file, pool.image_path(vol.id))
        _quietly(report, records.remove, vol.id)
        catalog.delete_volume(vol.id)
        report.finished_deletes.append(vol.id)

    for group in catalog.groups_in_state(SnapshotState.CREATING) + \
            catalog.groups_in_state(SnapshotState.DELETING):
        for sid in group.snapshot_ids:
            _quietly(report, files.remove_file, pool.snapshot_path(sid))
            _quietly(report, records.remove, sid)
        catalog.delete_group(group.id)
        report.rolled_back_snapshots.append(group.id)
    for snap in catalog.snapshots_in_state(SnapshotState.CREATING) + \
            catalog.snapshots_in_state(SnapshotState.DELETING):
        _quietly(report, files.remove_file, pool.snapshot_path(snap.id))
        _quietly(report, records.remove, snap.id)
        catalog.delete_snapshot(snap.id)
        report.rolled_back_snapshots.append(snap.id)

    # Records of volumes the catalog has are not read: start-up costs no file read per
    # volume (`csi-py pool check` reads them all).
    # The image directories and the loop devices are listed once, for the rebuild
    # and for the checks below.
    listing = PoolListing.of(pool, host)
    found = rebuild(catalog, pool, records, host, read_known=False, listing=listing)
    found.catalog_moved_to = report.rebuild.catalog_moved_to
    report.rebuild = found

    staged = {s.volume_id: s for s in catalog.list_stagings()}
    for staging in staged.values():
        # A capture killed between freeze and thaw leaves its filesystem frozen, and
        # every writer of that volume hung: thaw what is staged (harmless otherwise).
        if staging.access_type is AccessType.MOUNT and staging.staging_path and \
                host.mounts.is_mounted(staging.staging_path):
            _quietly(report, host.fs.thaw, staging.staging_path)
    for dev in listing.attached:
        volume_id = volume_of_device(host, pool, dev)
        if volume_id is None:
            continue  # not ours
        record = staged.get(volume_id)
        if record is not None and not dev.backing_deleted and \
                catalog.get_volume(volume_id) is not None:
            # Follow the staged device only if the recorded one is gone: a second,
            # read-only device (made for a read-only block publish) must never
            # become the staged one, or later read-write publishes get it.
            if record.device == dev.path:
                continue
            image = pool.image_path(volume_id)
            recorded = host.loops.get(record.device) if record.device else None
            if record.staged and (recorded is None or not backs(recorded, image)) and \
                    (record.readonly or not dev.read_only):
                record = replace(record, device=dev.path)
                catalog.put_staging(record)
                staged[volume_id] = record
            else:
                # A read-only extra device (made for a read-only block publish by
                # a predecessor): the node's later calls find it without a scan.
                driver.node.kernel.remember(image, dev.path)
            continue
        # Its backing file is (or was) in the pool, so a pod may still use it: it is
        # never detached here; an operator decides (docs/reliability.md).
        why = "backing file deleted" if dev.backing_deleted else "no volume claims it"
        report.left_alone.append(f"{dev.path} ({dev.backing_file}): {why}")
        log.warning("loop device %s on pool file %s: %s; left attached", dev.path,
                    dev.backing_file, why)

    # A known image costs one set lookup (10,000 of them at start-up). Snapshot images
    # are named by their snapshot's key, without the node part of its id.
    known = catalog.volume_states()
    _sweep(report, pool.volumes_dir, listing.volume_names, known)
    snapshot_keys = {file_key(sid) for sid in catalog.snapshot_states()}
    _sweep(report, pool.snapshots_dir, listing.snapshot_names, snapshot_keys)
    report.removed_temp_files += files.remove_stale_temp_files(pool.records_dir)
    for path in report.unknown_images:
        log.warning("pool file %s belongs to no volume in the catalog; left in place", path)
    return report


def _create_committed(records: Records, pool: Pool, vol: Volume) -> bool:
    """Whether a CREATING volume's create reached its commit point: its record (written
    after the image was complete and synced) describes it and the image is there.
    Read-only; never raises."""
    rec = records.get_volume(vol.id)
    return rec is not None and rec.volume.name == vol.name and \
        files.exists(pool.image_path(vol.id))


def _sweep(report: ReconcileReport, directory: str, names: list[str],
           known: Collection[str]) -> None:
    """Remove the temp files (".name") among an image directory's `names` and report
    the images whose stem (the name without ".img") is not in `known`."""
    for name in names:
        if not name.startswith(".") and name.removesuffix(".img") in known:
            continue
        path = os.path.join(directory, name)
        if name.startswith("."):
            _quietly(report, files.remove_file, path)
            report.removed_temp_files.append(path)
        else:
            report.unknown_images.append(path)


def _quietly(report: ReconcileReport, func, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        func(*args)
        return True
    except (LinuxError, OSError) as exc:
        report.errors.append(f"{func.__name__}{args}: {exc}")
        log.warning("reconcile: %s%s failed: %s", func.__name__, args, exc)
        return False

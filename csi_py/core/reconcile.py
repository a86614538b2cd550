"""Start-up reconciliation: bring the catalog and the kernel into agreement after a
start or a crash, and report what was found and done."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import replace
from typing import Literal, get_args

from csi_py.core.identity import backs, volume_of_device
from csi_py.core.pool import Pool
from csi_py.core.rebuild import PoolListing, RebuildReport, rebuild
from csi_py.domain.findings import Findings
from csi_py.domain.model import AccessType, SnapshotState, Volume, VolumeState
from csi_py.domain.snapshot_ids import file_key
from csi_py.linux import Host, files
from csi_py.linux.errors import LinuxError
from csi_py.linux.volume_view import VolumeKernel
from csi_py.state.catalog import Catalog
from csi_py.state.records import Records

log = logging.getLogger(__name__)


ReconcileKind = Literal[
    "rolled_back_creates", "finished_creates", "finished_deletes", "rolled_back_snapshots",
    "left_alone", "removed_temp_files", "unknown_images", "errors"]


class ReconcileReport(Findings[ReconcileKind]):
    """What start-up reconciliation found and did; logged and kept for diagnostics.
    `left_alone` are loop devices on pool files that no volume claims (a deleted
    image, a volume the catalog and the records do not know): never detached, only
    reported. `rebuild` is what the rebuild of the catalog found."""

    KINDS = get_args(ReconcileKind)

    def __init__(self) -> None:
        super().__init__()
        self.rebuild = RebuildReport()

    def summary(self) -> str:
        """One log line with every kind's count, the rebuild's included. Pure."""
        counts = self.counts()
        counts.update(self.rebuild.counts())
        return "reconciled: " + " ".join(f"{k}={n}" for k, n in counts.items())

    def __repr__(self) -> str:
        return f"ReconcileReport({self._nonempty()}, rebuild={self.rebuild!r})"


def reconcile(catalog: Catalog, pool: Pool, records: Records, host: Host,
              kernel: VolumeKernel, catalog_moved_to: str = "") -> ReconcileReport:
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

    Idempotent: a second run changes nothing (it reports again what it left alone).
    A file or record that cannot be removed, or a filesystem that cannot be thawed, is
    reported under `errors`, not raised; the catalog's own errors (CatalogError) are.
    """
    report = ReconcileReport()
    for vol in catalog.volumes_in_state(VolumeState.CREATING):
        if _create_committed(records, pool, vol):
            catalog.set_volume_state(vol.id, VolumeState.READY)
            report.add("finished_creates", vol.id)
            continue
        _quietly(report, files.remove_file, pool.image_path(vol.id))
        _quietly(report, records.remove, vol.id)
        catalog.delete_volume(vol.id)
        report.add("rolled_back_creates", vol.id)
    for vol in catalog.volumes_in_state(VolumeState.DELETING):
        _quietly(report, files.remove_file, pool.image_path(vol.id))
        _quietly(report, records.remove, vol.id)
        catalog.delete_volume(vol.id)
        report.add("finished_deletes", vol.id)

    for group in catalog.groups_in_state(SnapshotState.CREATING) + \
            catalog.groups_in_state(SnapshotState.DELETING):
        for sid in group.snapshot_ids:
            _quietly(report, files.remove_file, pool.snapshot_path(sid))
            _quietly(report, records.remove, sid)
        catalog.delete_group(group.id)
        report.add("rolled_back_snapshots", group.id)
    for snap in catalog.snapshots_in_state(SnapshotState.CREATING) + \
            catalog.snapshots_in_state(SnapshotState.DELETING):
        _quietly(report, files.remove_file, pool.snapshot_path(snap.id))
        _quietly(report, records.remove, snap.id)
        catalog.delete_snapshot(snap.id)
        report.add("rolled_back_snapshots", snap.id)

    # Records of volumes the catalog has are not read: start-up costs no file read per
    # volume (`csi-py pool check` reads them all).
    # The image directories and the loop devices are listed once, for the rebuild
    # and for the checks below.
    listing = PoolListing.of(pool, host)
    found = rebuild(catalog, pool, records, host, read_known=False, listing=listing)
    if catalog_moved_to:
        found.add("catalog_moved_to", catalog_moved_to)
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
                kernel.remember(image, dev.path)
            continue
        # Its backing file is (or was) in the pool, so a pod may still use it: it is
        # never detached here; an operator decides (docs/reliability.md).
        why = "backing file deleted" if dev.backing_deleted else "no volume claims it"
        report.add("left_alone", f"{dev.path} ({dev.backing_file}): {why}")
        log.warning("loop device %s on pool file %s: %s; left attached", dev.path,
                    dev.backing_file, why)

    # A known image costs one set lookup (10,000 of them at start-up). Snapshot images
    # are named by their snapshot's key, without the node part of its id.
    known = catalog.volume_states()
    _sweep(report, pool.volumes_dir, listing.volume_names, known)
    snapshot_keys = {file_key(sid) for sid in catalog.snapshot_states()}
    _sweep(report, pool.snapshots_dir, listing.snapshot_names, snapshot_keys)
    report.extend("removed_temp_files", files.remove_stale_temp_files(pool.records_dir))
    for path in report["unknown_images"]:
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
            report.add("removed_temp_files", path)
        else:
            report.add("unknown_images", path)


def _quietly(report: ReconcileReport, func, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        func(*args)
        return True
    except (LinuxError, OSError) as exc:
        report.add("errors", f"{func.__name__}{args}: {exc}")
        log.warning("reconcile: %s%s failed: %s", func.__name__, args, exc)
        return False

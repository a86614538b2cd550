"""Sizes and space: the size a request gets, and what the pool can still offer.

The sizing functions are pure; Space reads the pool's real free space (statvfs) and the
catalog's promised bytes each time it is asked, never a cached figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from csi_py.config import MIN_FS_BYTES, Config
from csi_py.core.pool import Pool
from csi_py.core.poolstate import PoolCondition, PoolState, pool_state
from csi_py.core.rules import check_capability, parse_parameters
from csi_py.core.topology import topology_matches
from csi_py.domain.errors import (
    InvalidArgument,
    OutOfRange,
    ResourceExhausted,
    Subject,
    Unavailable,
)
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import Capability, CapacityRange, Provisioning, Volume
from csi_py.linux import copies, files
from csi_py.linux.errors import LinuxError
from csi_py.linux.filesystems import for_type
from csi_py.state.catalog import Catalog
from csi_py.state.errors import CatalogError


@dataclass(frozen=True)
class CapacityReport:
    available_bytes: int
    maximum_volume_bytes: int
    minimum_volume_bytes: int


def check_range(rng: CapacityRange, subject: Subject | None = None) -> None:
    """A capacity_range's own sanity: no negative bytes, required not above the limit.
    Pure; raises InvalidArgument (about `subject` when given)."""
    req, lim = rng.required_bytes, rng.limit_bytes
    if req < 0 or lim < 0:
        raise InvalidArgument("capacity_range bytes must not be negative", subject=subject)
    if lim and req > lim:
        raise InvalidArgument(f"required_bytes {req} is larger than limit_bytes {lim}",
                              subject=subject)


def resolve_size(
    config: Config, rng: CapacityRange, fs_type: str, mount: bool, at_least: int = 0
) -> int:
    """The size to create for `rng`: the default when unset, at least the filesystem's
    minimum, rounded up to the granularity, and within the limit. Pure.

    Raises InvalidArgument for negative or inverted ranges, OutOfRange when no size
    that satisfies the range can be made.
    """
    check_range(rng)
    req, lim = rng.required_bytes, rng.limit_bytes
    gran = config.size_granularity_bytes
    floor = max(MIN_FS_BYTES.get(fs_type, gran) if mount else gran, at_least)
    if lim and at_least > lim:
        raise OutOfRange(
            f"limit_bytes {lim} is smaller than the source's {at_least} bytes; a volume"
            " made from a snapshot or a volume is at least as large as its source"
        )
    # Without a request, a copy of a snapshot or volume gets its source's size.
    want = req or at_least or (min(config.default_size_bytes, lim) if lim else
                               config.default_size_bytes)
    size = -(-max(want, floor) // gran) * gran
    if lim and size > lim:
        # Rounding up broke the limit; a smaller multiple may still fit.
        size = lim // gran * gran
        if size < max(req, floor):
            raise OutOfRange(
                f"no size between {req} and {lim} bytes is possible: sizes are multiples"
                f" of {gran} bytes and {fs_type if mount else 'a volume'} needs at least"
                f" {floor} bytes"
            )
    if size > config.max_volume_bytes:
        raise OutOfRange(
            f"{size} bytes is more than the largest volume ({config.max_volume_bytes})"
        )
    return size


def fit_growth(fs_type: str, mount: bool, old: int, size: int, limit: int,
               subject: Subject, source: str = "") -> int:
    """`size` for a filesystem of `old` bytes that must grow to fill it, raised to what
    the filesystem can grow to (its min_grow_bytes; btrfs: 256 MiB) when the limit
    allows. Pure; raises OutOfRange when it does not (`source`: what a new volume is
    made from, for the message)."""
    fs = for_type(fs_type) if mount else None
    least = fs.min_grow_bytes if fs else 0
    if not least or size <= old or size >= least:
        return size
    if limit and limit < least:
        made = f"(from {source}) " if source else ""
        raise OutOfRange(
            f"{made}a {fs_type} filesystem can only be grown to {least}"
            f" bytes or more (the kernel refuses smaller resizes); limit_bytes is {limit}",
            subject=subject,
        )
    return least


@dataclass(eq=False)
class Space:
    """The pool's space as the controller offers it: its state, what a new volume of a
    provisioning can have, and the checks that refuse what does not fit."""

    config: Config
    catalog: Catalog
    pool: Pool

    def state(self, *, probe: bool = True) -> PoolState:
        """The pool's state now (`probe=False`: without the sync that finds a failed
        filesystem, see poolstate.py). Never raises."""
        # The catalog's reserve comes back as soon as there is room for it, before
        # the free space is measured for a new volume.
        self.pool.keep_catalog_reserve()
        return pool_state(self.pool, self.config.reserve_bytes, probe=probe)

    @contextmanager
    def failure_explained(self, subject: Subject) -> Iterator[None]:
        """Run the block; when it fails (the catalog, a file or a loop device) on a pool
        whose filesystem has failed, raise Unavailable with the pool's message instead
        (the CO retries): nothing can be deleted from such a pool or recorded in its
        catalog. Any other failure goes on as it was raised.

        The probe runs only after a failure: a working pool pays nothing for the check
        (its sync is a disk cache flush), and a failed one cannot take the block's first
        write, whose error brings the probe in."""
        try:
            yield
        except (CatalogError, LinuxError, OSError) as exc:
            state = self.state()
            if state.failed:
                raise Unavailable(state.message, subject=subject) from exc
            raise

    def report(self, provisioning: Provisioning, state: PoolState | None = None
               ) -> CapacityReport:
        """What a new volume of this provisioning can have, from the pool's real space.

        Thick volumes take real blocks now, so they get the free space. Thin volumes only
        promise: their total may reach thin_overcommit times the pool's size.
        """
        state = state or self.state()
        total, _ = files.space(self.pool.volumes_dir) if not state.failed else (0, 0)
        usable_free = max(0, state.free_bytes - self.config.reserve_bytes)
        if state.condition is not PoolCondition.OK:
            # A failed pool offers nothing; a full one cannot even hold what thin
            # volumes already promised, so it promises no more.
            available = 0
        elif provisioning is Provisioning.THICK:
            available = usable_free
        else:
            promise_limit = int((total - self.config.reserve_bytes) * self.config.thin_overcommit)
            available = max(0, promise_limit - self.catalog.provisioned_bytes())
        gran = self.config.size_granularity_bytes
        available = available // gran * gran
        return CapacityReport(
            available_bytes=available,
            maximum_volume_bytes=min(available, self.config.max_volume_bytes),
            minimum_volume_bytes=gran,
        )

    def for_request(
        self, caps: list[Capability], parameters: dict[str, str], topology: dict[str, str] | None
    ) -> CapacityReport:
        """GetCapacity: 0 when the capabilities or topology cannot be served here."""
        if topology is not None and not topology_matches(
            topology, self.config.topology_key, self.config.node_id
        ):
            return CapacityReport(0, 0, 0)
        try:
            for cap in caps:
                check_capability(cap, self.config.filesystems)
            _, provisioning = parse_parameters(self.config, parameters, caps)
        except InvalidArgument:
            return CapacityReport(0, 0, 0)
        return self.report(provisioning)

    def check_fits(self, name: str, size: int, provisioning: Provisioning) -> None:
        """Raise ResourceExhausted when a new volume of `size` bytes does not fit, and
        Unavailable when the pool is known to have failed (read-only). Does not sync to
        find out: a create syncs its own writes, and Volumes names the pool's failure
        when one of them fails (the probe then)."""
        state = self.state(probe=False)
        if state.failed:
            raise Unavailable(state.message, subject=volume_subject(name=name))
        report = self.report(provisioning, state)
        if size > report.available_bytes:
            raise ResourceExhausted(
                f"{size} bytes ({provisioning.value}) do not fit; the pool"
                f" {self.pool.root} can offer {report.available_bytes} bytes",
                subject=volume_subject(name=name),
            )

    def check_growth_fits(self, volume: Volume, grow_by: int) -> None:
        """Raise ResourceExhausted when growing `volume` by `grow_by` bytes does not fit."""
        report = self.report(volume.provisioning)
        if grow_by > report.available_bytes:
            raise ResourceExhausted(
                f"growing by {grow_by} bytes does not fit; the pool"
                f" {self.pool.root} can offer {report.available_bytes} bytes",
                subject=volume_subject(volume.id),
            )

    def check_copy_room(self, subject: Subject, volumes: list[Volume]) -> None:
        """A snapshot's copy needs the sources' allocated bytes; a reflink needs (almost)
        none. Raises ResourceExhausted."""
        if copies.supports_reflink(self.pool.snapshots_dir):
            return
        needed = sum(files.allocated_bytes(self.pool.image_path(vol.id)) for vol in volumes)
        _, free = files.space(self.pool.snapshots_dir)
        if needed > max(0, free - self.config.reserve_bytes):
            raise ResourceExhausted(
                f"copying {needed} allocated bytes needs more than the {free} bytes"
                f" free in {self.pool.root}",
                subject=subject,
            )

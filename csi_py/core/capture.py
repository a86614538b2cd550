"""Point-in-time capture of backing files: the one mechanism behind snapshots, clones
and group snapshots.

A staged filesystem is frozen (FIFREEZE) while its file is captured, so the image holds
a clean filesystem; several volumes are frozen together so a group is consistent. A
staged block volume has no filesystem to freeze: its loop device is flushed so every
acknowledged write is in the file. Capture is a reflink where the pool's filesystem
shares extents (a moment, no space) and a sparse-aware copy elsewhere (only allocated
data moves; the freeze lasts as long as the copy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from csi_py.core.crashpoints import crash_point
from csi_py.core.pool import Pool
from csi_py.domain.model import AccessType
from csi_py.linux import Host, copies, files
from csi_py.linux.copies import Progress
from csi_py.state.catalog import Catalog


class Capturer:
    def __init__(self, catalog: Catalog, pool: Pool, host: Host) -> None:
        self.catalog = catalog
        self.pool = pool
        self.host = host

    def _staged(self, volume_id: str) -> tuple[list[str], list[str]]:
        """(mount points to freeze, loop devices to flush) for a volume staged here."""
        record = self.catalog.get_staging(volume_id)
        if record is None or not record.staged:
            return [], []
        image = self.pool.image_path(volume_id)
        devices = [d.path for d in self.host.loops.find_by_backing_file(image)]
        if record.access_type is AccessType.MOUNT and \
                self.host.mounts.is_mounted(record.staging_path):
            return [record.staging_path], devices
        return [], devices

    @contextmanager
    def quiesced(self, volume_ids: Sequence[str]) -> Iterator[None]:
        """Freeze every staged filesystem of `volume_ids` (and flush their loop
        devices) for the duration of the block; always thaw what was frozen.

        Raises FreezeError when a freeze fails (the earlier ones thawed first) or, after
        a body that succeeded, when a thaw fails: a filesystem left frozen hangs its
        pod, so the capture must not report success then. LoopError from a flush."""
        mounts: list[str] = []
        for vid in volume_ids:
            points, devices = self._staged(vid)
            for dev in devices:
                self.host.loops.flush(dev)
            mounts.extend(points)
        with self.host.fs.frozen(mounts):
            crash_point("snapshot.frozen")
            yield

    def capture(
        self,
        pairs: Sequence[tuple[str, str]],
        volume_ids: Sequence[str],
        progress: Progress | None = None,
        allow_reflink: bool = True,
    ) -> list[str]:
        """Copy each (source image, destination) pair while `volume_ids` are quiesced.

        Returns the method used per pair ("reflink" or "copy"). On failure, removes the
        destinations it made and re-raises (OSError, LinuxError).
        """
        made: list[str] = []
        methods: list[str] = []
        try:
            with self.quiesced(volume_ids):
                for src, dst in pairs:
                    methods.append(copies.clone_file(src, dst, progress=progress,
                                                    allow_reflink=allow_reflink))
                    made.append(dst)
        except BaseException:
            for path in made:
                files.remove_file(path)
            raise
        return methods

"""What the kernel holds for one volume: its loop devices (known by backing inode) and
the mounts on each, read once per request from the recorded devices and one mount table.

A loop device is matched to its image by the pair (st_dev, st_ino) of the file the kernel
holds, never by its number alone; the numbers recorded (the staged device in the catalog,
read-only extra devices here in memory) are only where to look first. Every node path
reads the recorded devices and verifies them; only a recorded device that fails that
check (detached, or its number reused) makes it scan every loop device on the node.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from csi_py.linux import files
from csi_py.linux.interfaces import LoopService, MountService
from csi_py.linux.loop import LoopDevice, is_path_tail
from csi_py.linux.mountinfo import MountEntry, MountTable, normalize


def backs(dev: LoopDevice, image: str) -> bool:
    """Whether `dev` is attached to the image file `image` right now: not deleted, and
    the same (st_dev, st_ino) as the file at that path. The path the kernel shows is
    either `image` itself or, for a device attached through a mount this process cannot
    reach (a node plugin container restarted since), a tail of it; a tail counts only
    when the identities agree. When either identity cannot be read (an in-memory fake;
    a pool that fails with EIO), an exact path decides, so a teardown on a failed pool
    still finds its devices. Never raises."""
    if dev.backing_deleted:
        return False
    exact = dev.backing_file == image
    if not exact and not is_path_tail(dev.backing_file, image):
        return False
    found = files.identity(image) if dev.backing_inode else None
    if found is None:
        return exact
    return found == (dev.backing_dev, dev.backing_inode)


def held_deleted(dev: LoopDevice, image: str) -> bool:
    """Whether `dev` still holds a deleted file that was `image` (deleted behind our back:
    volume ids are never reused, so it is this volume's and its mounts are ours). Pure."""
    return dev.backing_deleted and (dev.backing_file == image or
                                    is_path_tail(dev.backing_file, image))


def devices_on(loops: LoopService, image: str) -> list[LoopDevice]:
    """Every loop device attached to `image` (checked by identity), plus any still
    holding a deleted file at that path. Scans every loop device of the node: only for
    a fallback and for start-up. Read-only."""
    return [d for d in loops.find_by_backing_file(image)
            if held_deleted(d, image) or backs(d, image)]


def mount_is_of(entry: MountEntry, device: str) -> bool:
    """Whether a mount shows `device`: a filesystem on it (its mount table entry names
    the device as source, also for bind mounts of it and for btrfs, whose device numbers
    are anonymous), or the device node itself bind-mounted onto a file (a published
    block volume: a devtmpfs entry whose root is the node's name). Pure."""
    if entry.source == device:
        return True
    return entry.root == "/" + os.path.basename(device) and entry.fs_type in ("devtmpfs", "tmpfs")


def device_named_by(entry: MountEntry) -> str:
    """The loop device node a mount names ("/dev/loopN"), or "" when it names none. Only
    a candidate: the caller checks its identity. Pure."""
    if entry.source.startswith("/dev/loop"):
        return entry.source
    if entry.fs_type in ("devtmpfs", "tmpfs") and entry.root.startswith("/loop"):
        return "/dev" + entry.root
    return ""


@dataclass(frozen=True)
class VolumeView:
    """One volume as the kernel showed it at one moment: its devices (the staged one
    first, then read-only extras; also a device that still holds its deleted image),
    the recorded device when it no longer backs the image (`lost`: its mounts, which
    name the dead node, are still ours), and the mount table of that moment (parsed
    only where asked). Pure: every method only reads these fields."""

    image: str
    devices: tuple[LoopDevice, ...]
    lost: str
    mounts: MountTable

    @property
    def live(self) -> list[LoopDevice]:
        """The devices attached to the image itself (not to a deleted file)."""
        return [d for d in self.devices if not d.backing_deleted]

    @property
    def staged(self) -> LoopDevice | None:
        """The device a stage made: a writable one first (read-only extras serve
        read-only block publishes), else a read-only staged one."""
        live = sorted(self.live, key=lambda d: d.read_only)
        return live[0] if live else None

    def stack(self, path: str) -> list[MountEntry]:
        """The mounts at `path` (normalized, symlinks not resolved), bottom first."""
        return self.mounts.at(path)

    def top(self, path: str) -> MountEntry | None:
        """The visible mount at `path`, or None."""
        stack = self.stack(path)
        return stack[-1] if stack else None

    def owner(self, entry: MountEntry) -> LoopDevice | None:
        """This volume's device that `entry` shows, or None."""
        return next((d for d in self.devices if mount_is_of(entry, d.path)), None)

    def shows(self, entry: MountEntry | None, *, lost_too: bool = False) -> bool:
        """Whether `entry` is a mount of this volume (of the lost device too, if asked)."""
        if entry is None:
            return False
        if self.owner(entry) is not None:
            return True
        return lost_too and bool(self.lost) and mount_is_of(entry, self.lost)

    def users(self, *besides: str) -> list[MountEntry]:
        """The volume's mounts at any path but `besides`, in mount table order."""
        skip = {normalize(p) for p in besides}
        # Every mount of a device names the device node's name (as its source, or as
        # the root of a bind of the node): only those lines are parsed.
        names = [os.path.basename(d.path) for d in self.devices]
        return [m for m in self.mounts.naming(names)
                if m.mount_point not in skip and self.shows(m)]

    def ours_on_top(self, path: str, *, lost_too: bool = False) -> int:
        """How many mounts of this volume are stacked on top of `path` (each needs one
        unmount); a mount of something else above them stops the count."""
        count = 0
        for entry in reversed(self.stack(path)):
            if not self.shows(entry, lost_too=lost_too):
                break
            count += 1
        return count


class VolumeKernel:
    """Builds VolumeViews and remembers the read-only extra devices this process
    attached for read-only block publishes (the catalog records only the staged
    device). Memory is only where to look: every device is verified by identity when
    read, and start-up (which lists every loop device anyway) teaches it the extras a
    predecessor left. Thread-safe."""

    def __init__(self, loops: LoopService, mounts: MountService) -> None:
        self.loops = loops
        self.mounts = mounts
        self._extras: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def remember(self, image: str, device: str) -> None:
        """Record that `device` is a read-only extra device of `image`. Idempotent."""
        with self._lock:
            self._extras.setdefault(image, set()).add(device)

    def forget(self, image: str, *devices: str) -> None:
        """Drop `devices` (all, if none named) from `image`'s extras. Idempotent."""
        with self._lock:
            if not devices:
                self._extras.pop(image, None)
                return
            known = self._extras.get(image)
            if known is not None:
                known.difference_update(devices)
                if not known:
                    del self._extras[image]

    def extras(self, image: str) -> list[str]:
        """The remembered extra devices of `image` (unverified), sorted."""
        with self._lock:
            return sorted(self._extras.get(image, ()))

    def view(
        self,
        image: str,
        recorded: str = "",
        *,
        at: str = "",
        scan: bool = False,
    ) -> VolumeView:
        """What the kernel holds for `image` now: one read of the mount table; the
        recorded device, the remembered extras and the device the top mount at `at`
        names (a read-only extra made by a predecessor), each verified by identity;
        every loop device scanned only when `scan` is asked or the recorded device
        fails its check. Read-only (a remembered extra that fails its check is
        forgotten); never raises for races. Raises OSError when the mount table cannot
        be read."""
        mounts = self.mounts.table()
        stack = mounts.at(at) if at else []
        named = device_named_by(stack[-1]) if stack else ""
        names = list(dict.fromkeys([recorded, *self.extras(image), named]))
        found: list[LoopDevice] = []
        lost = ""
        for name in names:
            if not name:
                continue
            dev = self.loops.get(name)
            if dev is not None and (backs(dev, image) or held_deleted(dev, image)):
                found.append(dev)
                if name == recorded and dev.backing_deleted:
                    lost = recorded
            elif name == recorded:
                lost = recorded
            else:
                self.forget(image, name)
        if scan or lost:
            # The fallback: where the record is wrong, only a scan can tell what else
            # holds the image (re-attached elsewhere, or attached by someone else).
            found = devices_on(self.loops, image)
        return VolumeView(image, tuple(_staged_first(found)), lost, mounts)


def _staged_first(devices: Sequence[LoopDevice]) -> list[LoopDevice]:
    unique = {d.path: d for d in devices}
    return sorted(unique.values(), key=lambda d: (d.backing_deleted, d.read_only, d.number))

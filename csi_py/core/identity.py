"""Loop devices known by their backing file's identity, not by their number.

A number is reused as soon as a device is detached, and a path can be replaced; the
pair (st_dev, st_ino) of the backing file the kernel holds cannot. Every node call
that uses a device (publish, unpublish, unstage, stats, health) first checks it with
`backs`, and `device_problem` is what health reports about a staged volume's device.
"""

from __future__ import annotations

from csi_py.domain.model import Staging
from csi_py.linux import Host, files
from csi_py.linux.loop import LoopDevice


def backs(dev: LoopDevice, image: str) -> bool:
    """Whether `dev` is attached to the image file `image` right now: same path, not
    deleted, and the same (st_dev, st_ino) as the file at that path. When either
    identity cannot be read (an in-memory fake; a pool that fails with EIO), the
    path decides, so a teardown on a failed pool still finds its devices. Never
    raises."""
    if dev.backing_file != image or dev.backing_deleted:
        return False
    if not dev.backing_inode:
        return True
    found = files.identity(image)
    return found is None or found == (dev.backing_dev, dev.backing_inode)


def devices_on(host: Host, image: str) -> list[LoopDevice]:
    """Every loop device attached to `image` (checked by identity), plus any still
    holding a deleted file at that path (its mounts must still be found and taken
    down). Read-only."""
    return [d for d in host.loops.find_by_backing_file(image)
            if d.backing_deleted or backs(d, image)]


def device_problem(host: Host, record: Staging, image: str) -> str | None:
    """What is wrong with a staged volume's loop device, for its volume condition:
    detached (gone, or its number now attached to another file), or detached while
    mounted (LOOP_CLR_FD behind our back: it lives on only until its last unmount).
    None when it is sound. Read-only; never raises."""
    devices = [d for d in devices_on(host, image) if not d.backing_deleted]
    what = f"volume {record.volume_id} is staged"
    if record.staging_path:
        what += f" at {record.staging_path}"
    if not devices:
        recorded = host.loops.get(record.device) if record.device else None
        reused = f"; {record.device} now backs {recorded.backing_file}" \
            if recorded is not None else ""
        return (f"{what} but its loop device {record.device or ''} was detached{reused};"
                " pods using it get I/O errors or no data. Restart the pods"
                " (NodeStageVolume attaches it again)")
    doomed = [d.path for d in devices if d.autoclear]
    if doomed:
        return (f"{what} but its loop device {', '.join(doomed)} was detached while in use"
                " (losetup -d / LOOP_CLR_FD): it goes away at its last unmount. Restart"
                " the pods to stage it again")
    return None

"""Which pool volume a loop device belongs to, and what health reports about a staged
volume's device; the identity check itself (`backs`) lives in linux/volume_view.py.

A number is reused as soon as a device is detached, and a path can be replaced; the
pair (st_dev, st_ino) of the backing file the kernel holds cannot.
"""

from __future__ import annotations

from csi_py.core.pool import Pool
from csi_py.domain.model import Staging
from csi_py.linux import Host
from csi_py.linux.interfaces import LoopService
from csi_py.linux.loop import LoopDevice, is_path_tail
from csi_py.linux.volume_view import VolumeView, backs


def volume_of_device(host: Host, pool: Pool, dev: LoopDevice) -> str | None:
    """The id of the pool volume whose image `dev` is attached to, or None when it is
    not one of this pool's. A device shown by a tail of an image's path (attached by
    a predecessor through a mount out of reach) is this pool's only if its backing
    identity is the image's; one whose backing file was deleted is taken by its path
    alone (no identity is left to compare; ids are never reused). Read-only; never
    raises."""
    volume_id = pool.volume_id_of_image(dev.backing_file)
    if volume_id is not None:
        return volume_id
    volume_id = pool.volume_id_of_name(dev.backing_file.rsplit("/", 1)[-1])
    if volume_id is None:
        return None
    image = pool.image_path(volume_id)
    if not is_path_tail(dev.backing_file, image):
        return None
    if dev.backing_deleted:
        return volume_id
    # Scans read no identity (they never open others' devices); this one is a
    # candidate, so ask it.
    full = dev if dev.backing_inode else host.loops.get(dev.path)
    return volume_id if full is not None and backs(full, image) else None


def device_problem(view: VolumeView, record: Staging, loops: LoopService) -> str | None:
    """What is wrong with a staged volume's loop device (`view`: the kernel's view of
    it, from its record), for its volume condition: detached (gone, or its number now
    attached to another file), or detached while mounted (LOOP_CLR_FD behind our back:
    it lives on only until its last unmount). None when it is sound. Read-only; never
    raises."""
    devices = view.live
    what = f"volume {record.volume_id} is staged"
    if record.staging_path:
        what += f" at {record.staging_path}"
    if not devices:
        recorded = loops.get(record.device) if record.device else None
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


__all__ = ["backs", "device_problem", "volume_of_device"]

"""`csi-py demo`: start a real driver on a temporary pool and walk one volume through
its whole life, printing each step and how long it took. Leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from csi_py.linux import exec as linux_exec
from csi_py.linux import files, real_host
from csi_py.linux.process import is_root
from csi_py.rpc.client import Client

NODE_ID = "demo-node"


class Steps:
    def __init__(self) -> None:
        self.number = 0

    def run(self, title: str, action: Callable[[], Any], detail: Callable[[Any], str] | None = None
            ) -> Any:
        self.number += 1
        start = time.perf_counter()
        result = action()
        ms = (time.perf_counter() - start) * 1e3
        extra = f"  {detail(result)}" if detail else ""
        print(f"{self.number:>2}. {title:<44} {ms:9.1f} ms{extra}", flush=True)
        return result


def _leftovers(workdir: str) -> list[str]:
    """Loop devices and mounts that still point into the demo's own directory."""
    host = real_host()
    found = [f"{dev.path} -> {dev.backing_file}" for dev in host.loops.list_attached()
             if dev.backing_file.startswith(workdir)]
    found += [f"mount {entry.mount_point}" for entry in host.mounts.list_mounts()
              if entry.mount_point.startswith(workdir)]
    return found


def run_demo(fs_type: str = "ext4", block: bool = False, size: int = 512 * 1024 * 1024) -> int:
    if not is_root():
        print("csi-py demo needs root: it attaches loop devices and mounts filesystems",
              file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="csi-py-demo-")
    pool = os.path.join(workdir, "pool")
    socket_path = os.path.join(workdir, "csi.sock")
    staging = os.path.join(workdir, "staging")
    target = os.path.join(workdir, "target")
    files.make_dirs(staging)
    kind = "block" if block else fs_type
    print(f"csi-py demo: one {kind} volume of {size >> 20} MiB, pool in {pool}\n")
    server = linux_exec.spawn(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{socket_path}",
         "--node-id", NODE_ID, "--pool", pool, "--log-level", "WARNING"],
    )
    steps = Steps()
    access: dict[str, Any] = {"block": block, "fs_type": fs_type}
    status = 0
    try:
        # No deadline on the calls: a slow disk makes a slow demo, not a failed one.
        with Client(socket_path, timeout=None) as c:
            steps.run("start the driver and wait for Probe ready", lambda: c.wait_ready(30))
            steps.run("GetPluginInfo", c.plugin_info, lambda r: f"{r.name} {r.vendor_version}")
            vol = steps.run("CreateVolume", lambda: c.create_volume(
                "demo-volume", size, parameters={} if block else {"fsType": fs_type}, **access),
                lambda v: f"{v.volume_id}, {v.capacity_bytes >> 20} MiB")
            vid = vol.volume_id
            context = steps.run("ControllerPublishVolume (attach to node)",
                                lambda: c.controller_publish(vid, NODE_ID, **access),
                                lambda ctx: f"context {ctx}")
            steps.run("NodeStageVolume (loop device, mkfs, mount)",
                      lambda: c.node_stage(vid, staging, context, **access))
            steps.run("NodePublishVolume (bind mount)",
                      lambda: c.node_publish(vid, staging, target, context, **access))
            # Any bytes will do (they are compared, not kept secret).
            payload = random.randbytes(4 << 20)
            digest = hashlib.sha256(payload).hexdigest()
            path = target if block else os.path.join(target, "hello.bin")
            steps.run("write 4 MiB of data and read it back",
                      lambda: files.write_and_read_back(path, payload, create=not block)
                      == payload,
                      lambda ok: f"sha256 {digest[:16]}... {'matches' if ok else 'DIFFERS'}")
            steps.run("NodeGetVolumeStats", lambda: c.volume_stats(vid, target),
                      lambda usage: ", ".join(f"{u.unit} used {u.used} of {u.total}"
                                              for u in usage))
            steps.run("NodeUnpublishVolume", lambda: c.node_unpublish(vid, target))
            steps.run("NodeUnstageVolume (unmount, detach loop)",
                      lambda: c.node_unstage(vid, staging))
            steps.run("ControllerUnpublishVolume (detach)",
                      lambda: c.controller_unpublish(vid, NODE_ID))
            steps.run("DeleteVolume", lambda: c.delete_volume(vid))
    except Exception as exc:  # noqa: BLE001 - show the error, then clean up anyway
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        server.stop(grace=30)
        leftovers = _leftovers(workdir)
        if leftovers:
            print("\nleft behind (cleaning up now):\n  " + "\n  ".join(leftovers), file=sys.stderr)
            _force_cleanup(workdir)
            status = 1
        files.remove_tree(workdir)
    if status == 0:
        print(f"\ndone: the driver stopped; no loop device, mount or file is left in {workdir}")
    return status


def _force_cleanup(workdir: str) -> None:
    host = real_host()
    for entry in reversed(host.mounts.list_mounts()):
        if entry.mount_point.startswith(workdir):
            host.mounts.unmount(entry.mount_point)
    for dev in host.loops.list_attached():
        if dev.backing_file.startswith(workdir):
            host.loops.detach(dev.path)

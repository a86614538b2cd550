"""`csi-py demo`: start a real driver on a temporary pool and walk one volume through
its whole life, printing each step and how long it took. Leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Client, block_capability, mount_capability

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
    found = []
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as fh:
                backing = fh.read().strip()
        except OSError:
            continue
        if backing.startswith(workdir):
            found.append(f"/dev/{name} -> {backing}")
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mount_point = line.split()[4]
            if mount_point.startswith(workdir):
                found.append(f"mount {mount_point}")
    return found


def run_demo(fs_type: str = "ext4", block: bool = False, size: int = 512 * 1024 * 1024) -> int:
    if os.geteuid() != 0:
        print("csi-py demo needs root: it attaches loop devices and mounts filesystems",
              file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="csi-py-demo-")
    pool = os.path.join(workdir, "pool")
    socket_path = os.path.join(workdir, "csi.sock")
    staging = os.path.join(workdir, "staging")
    target = os.path.join(workdir, "target")
    os.makedirs(staging)
    kind = "block" if block else fs_type
    print(f"csi-py demo: one {kind} volume of {size >> 20} MiB, pool in {pool}\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "csi_py", "serve", "--endpoint", f"unix://{socket_path}",
         "--node-id", NODE_ID, "--pool", pool, "--log-level", "WARNING"],
    )
    steps = Steps()
    cap = block_capability() if block else mount_capability(fs_type)
    status = 0
    try:
        with Client(socket_path) as c:
            steps.run("start the driver and wait for Probe ready", lambda: c.wait_ready(30))
            info = steps.run("GetPluginInfo", lambda: c.identity.GetPluginInfo(
                pb.GetPluginInfoRequest()), lambda r: f"{r.name} {r.vendor_version}")
            create = pb.CreateVolumeRequest(
                name="demo-volume", capacity_range=pb.CapacityRange(required_bytes=size),
                volume_capabilities=[cap], parameters={} if block else {"fsType": fs_type},
            )
            vol = steps.run("CreateVolume", lambda: c.controller.CreateVolume(create).volume,
                            lambda v: f"{v.volume_id}, {v.capacity_bytes >> 20} MiB")
            vid = vol.volume_id
            pub = steps.run("ControllerPublishVolume (attach to node)",
                            lambda: c.controller.ControllerPublishVolume(
                                pb.ControllerPublishVolumeRequest(
                                    volume_id=vid, node_id=NODE_ID, volume_capability=cap)),
                            lambda r: f"context {dict(r.publish_context)}")
            steps.run("NodeStageVolume (loop device, mkfs, mount)", lambda: c.node.NodeStageVolume(
                pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging,
                                          volume_capability=cap,
                                          publish_context=pub.publish_context)))
            steps.run("NodePublishVolume (bind mount)", lambda: c.node.NodePublishVolume(
                pb.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging,
                                            target_path=target, volume_capability=cap,
                                            publish_context=pub.publish_context)))
            payload = os.urandom(4 << 20)
            digest = hashlib.sha256(payload).hexdigest()
            steps.run("write 4 MiB of data and read it back",
                      lambda: _write_and_check(target, payload, block),
                      lambda ok: f"sha256 {digest[:16]}... {'matches' if ok else 'DIFFERS'}")
            steps.run("NodeGetVolumeStats", lambda: c.node.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target)),
                lambda r: ", ".join(f"{pb.VolumeUsage.Unit.Name(u.unit).lower()}"
                                    f" used {u.used} of {u.total}" for u in r.usage))
            steps.run("NodeUnpublishVolume", lambda: c.node.NodeUnpublishVolume(
                pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target)))
            steps.run("NodeUnstageVolume (unmount, detach loop)", lambda: c.node.NodeUnstageVolume(
                pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)))
            steps.run("ControllerUnpublishVolume (detach)",
                      lambda: c.controller.ControllerUnpublishVolume(
                          pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE_ID)))
            steps.run("DeleteVolume", lambda: c.controller.DeleteVolume(
                pb.DeleteVolumeRequest(volume_id=vid)))
            del info
    except Exception as exc:  # noqa: BLE001 - show the error, then clean up anyway
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        leftovers = _leftovers(workdir)
        if leftovers:
            print("\nleft behind (cleaning up now):\n  " + "\n  ".join(leftovers), file=sys.stderr)
            _force_cleanup(workdir)
            status = 1
        shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        print(f"\ndone: the driver stopped; no loop device, mount or file is left in {workdir}")
    return status


def _write_and_check(target: str, payload: bytes, block: bool) -> bool:
    path = target if block else os.path.join(target, "hello.bin")
    flags = os.O_RDWR | (0 if block else os.O_CREAT)
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        back = os.pread(fd, len(payload), 0)
    finally:
        os.close(fd)
    return back == payload


def _force_cleanup(workdir: str) -> None:
    from csi_py.linux import real_host

    host = real_host()
    for entry in reversed(host.mounts.list_mounts()):
        if entry.mount_point.startswith(workdir):
            host.mounts.unmount(entry.mount_point)
    for dev in host.loops.list_attached():
        if dev.backing_file.startswith(workdir):
            host.loops.detach(dev.path)

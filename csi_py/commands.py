"""Human-facing client commands against a running driver: volume create/list/delete, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Client, block_capability, mount_capability


def _fail(exc: grpc.RpcError) -> int:
    print(f"csi-py: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def _create(client: Client, args: argparse.Namespace, request: pb.CreateVolumeRequest
            ) -> pb.Volume:
    """CreateVolume with the name and size from the command line; prints the result."""
    request.name = args.name
    request.capacity_range.required_bytes = args.size
    vol = client.controller.CreateVolume(request, timeout=client.timeout).volume
    print(f"{vol.volume_id}\t{vol.capacity_bytes}\t{dict(vol.volume_context)}")
    return vol


def volume(args: argparse.Namespace) -> int:
    with Client(args.endpoint) as client:
        try:
            if args.action == "create":
                params = {"provisioning": "thick"} if args.thick else {}
                if args.fs_type:
                    params["fsType"] = args.fs_type
                vol = _create(client, args, pb.CreateVolumeRequest(
                    parameters=params, volume_capabilities=[
                        block_capability() if args.block else mount_capability(args.fs_type)]))
                topo = vol.accessible_topology[0].segments if vol.accessible_topology else {}
                print(f"# for a static PV: spec.csi.volumeHandle={vol.volume_id}; node affinity"
                      f" {dict(topo)}", file=sys.stderr)
            elif args.action == "list":
                token = ""
                print("VOLUME ID\tBYTES\tFS\tPUBLISHED ON")
                while True:
                    resp = client.controller.ListVolumes(
                        pb.ListVolumesRequest(max_entries=500, starting_token=token),
                        timeout=client.timeout,
                    )
                    for entry in resp.entries:
                        vol = entry.volume
                        nodes = ",".join(entry.status.published_node_ids) or "-"
                        print(f"{vol.volume_id}\t{vol.capacity_bytes}\t"
                              f"{vol.volume_context.get('fsType', '')}\t{nodes}")
                    token = resp.next_token
                    if not token:
                        break
            elif args.action == "delete":
                client.controller.DeleteVolume(
                    pb.DeleteVolumeRequest(volume_id=args.volume_id), timeout=client.timeout
                )
                print(f"deleted {args.volume_id}")
            elif args.action in ("restore", "clone"):
                source = pb.VolumeContentSource()
                if args.action == "restore":
                    source.snapshot.snapshot_id = args.source
                else:
                    source.volume.volume_id = args.source
                _create(client, args, pb.CreateVolumeRequest(
                    volume_content_source=source, volume_capabilities=[
                        block_capability() if args.block else mount_capability()]))
        except grpc.RpcError as exc:
            return _fail(exc)
    return 0


def info(args: argparse.Namespace) -> int:
    with Client(args.endpoint) as client:
        try:
            plugin = client.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
            node = client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
            ready = client.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value
            cap = client.controller.GetCapacity(pb.GetCapacityRequest(), timeout=10)
        except grpc.RpcError as exc:
            return _fail(exc)
    print(f"driver:   {plugin.name} {plugin.vendor_version}")
    print(f"node:     {node.node_id} topology={dict(node.accessible_topology.segments)}")
    print(f"ready:    {ready}")
    print(f"capacity: {cap.available_capacity} bytes (thin)")
    return 0


def snapshot(args: argparse.Namespace) -> int:
    with Client(args.endpoint) as client:
        try:
            if args.action == "create":
                snap = _create_snapshot_with_progress(client, args.volume_id, args.name)
                print(f"{snap.snapshot_id}\t{snap.size_bytes}\tready={snap.ready_to_use}")
            elif args.action == "list":
                token = ""
                print("SNAPSHOT ID\tSOURCE VOLUME\tBYTES\tCREATED")
                while True:
                    resp = client.controller.ListSnapshots(
                        pb.ListSnapshotsRequest(max_entries=500, starting_token=token,
                                                source_volume_id=args.volume),
                        timeout=client.timeout,
                    )
                    for entry in resp.entries:
                        s = entry.snapshot
                        created = s.creation_time.ToDatetime().isoformat(timespec="seconds")
                        print(f"{s.snapshot_id}\t{s.source_volume_id}\t{s.size_bytes}\t"
                              f"{created}")
                    token = resp.next_token
                    if not token:
                        break
            elif args.action == "delete":
                client.controller.DeleteSnapshot(
                    pb.DeleteSnapshotRequest(snapshot_id=args.snapshot_id),
                    timeout=client.timeout,
                )
                print(f"deleted {args.snapshot_id}")
        except grpc.RpcError as exc:
            return _fail(exc)
    return 0


def _create_snapshot_with_progress(client: Client, volume_id: str, name: str) -> pb.Snapshot:
    """CreateSnapshot, printing the progress of a copy-based capture while it runs.

    The driver reports a copy's progress in a file in its pool (the pool is named in
    GetPluginInfo's manifest); a reflink capture finishes before there is anything
    to show.
    """
    from concurrent.futures import ThreadPoolExecutor

    from csi_py.core.snapshots import progress_file_name

    manifest = client.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10).manifest
    progress_path = os.path.join(manifest.get("pool", ""), "snapshots", progress_file_name(name))
    request = pb.CreateSnapshotRequest(source_volume_id=volume_id, name=name)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(client.controller.CreateSnapshot, request, timeout=None)
        shown = False
        while not future.done():
            time.sleep(0.5)
            try:
                with open(progress_path) as fh:
                    state = json.load(fh)
            except (OSError, ValueError):
                continue
            done, total = state.get("done", 0), max(state.get("total", 0), 1)
            print(f"\rcopying: {done >> 20} of {total >> 20} MiB ({100 * done // total}%)",
                  end="", file=sys.stderr, flush=True)
            shown = True
        if shown:
            print(file=sys.stderr)
        return future.result().snapshot

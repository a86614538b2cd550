"""Human-facing client commands against a running driver: volume create/list/delete, info."""

from __future__ import annotations

import argparse
import sys

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Client, block_capability, mount_capability


def _fail(exc: grpc.RpcError) -> int:
    print(f"csi-py: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def volume(args: argparse.Namespace) -> int:
    with Client(args.endpoint) as client:
        try:
            if args.action == "create":
                params = {"provisioning": "thick"} if args.thick else {}
                if args.fs_type:
                    params["fsType"] = args.fs_type
                cap = block_capability() if args.block else mount_capability(args.fs_type)
                resp = client.controller.CreateVolume(
                    pb.CreateVolumeRequest(
                        name=args.name,
                        capacity_range=pb.CapacityRange(required_bytes=args.size),
                        volume_capabilities=[cap],
                        parameters=params,
                    ),
                    timeout=client.timeout,
                )
                vol = resp.volume
                print(f"{vol.volume_id}\t{vol.capacity_bytes}\t{dict(vol.volume_context)}")
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

"""Human-facing client commands against a running driver: volume and snapshot create,
list and delete, and info. Each returns the process's exit status: 0 done, 1 failed
(the reason printed on stderr in plain words)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from csi_py.config import MIN_FS_BYTES, ConfigError, endpoint_path, format_size
from csi_py.output import Column, render, table
from csi_py.rpc.client import Client, ClientError, ListedVolume, SnapshotInfo, VolumeInfo

VOLUME_COLUMNS = (
    Column("NAME", "name"), Column("ID", "id"), Column("SIZE", "size"), Column("TYPE", "type"),
    Column("PROVISIONING", "provisioning"), Column("STATE", "state"),
    Column("NODES", "nodes", wide=True), Column("BYTES", "capacityBytes", wide=True),
    Column("CONDITION", "condition", wide=True),
)
SNAPSHOT_COLUMNS = (
    Column("ID", "id"), Column("SOURCE VOLUME", "sourceVolumeId"), Column("SIZE", "size"),
    Column("READY", "readyToUse"), Column("CREATED", "created"),
    Column("BYTES", "sizeBytes", wide=True),
)


class CommandError(Exception):
    """A command cannot go on; the message is for a person and names what to do."""


def run(action: Callable[[Client, argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Connect to the driver at args.endpoint, run `action`, and turn every known failure
    into one line on stderr and exit status 1."""
    try:
        path = endpoint_path(args.endpoint)
        _check_listening(path)
        with Client(path) as client:
            try:
                action(client, args)
            except ClientError as exc:
                raise _rpc_error(exc, path) from None
    except (CommandError, ConfigError) as exc:
        print(f"csi-py: {exc}", file=sys.stderr)
        return 1
    return 0


def _no_driver(path: str, why: str) -> CommandError:
    return CommandError(
        f"no csi-py driver is listening on unix://{path} ({why}); start one with"
        f" `csi-py serve --endpoint unix://{path} --pool /var/lib/csi-py`, or point"
        " --endpoint (or $CSI_ENDPOINT) at a running one"
    )


def _check_listening(path: str) -> None:
    """Connect once without gRPC, so a missing driver is reported in plain words rather
    than as gRPC's retry noise. Raises CommandError."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(path)
    except FileNotFoundError:
        raise _no_driver(path, "the socket does not exist") from None
    except ConnectionRefusedError:
        raise _no_driver(path, "nothing answers on the socket") from None
    except PermissionError:
        raise CommandError(
            f"cannot connect to unix://{path}: permission denied (the driver's socket is"
            " owner-only; run as the user that runs the driver, usually root)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise CommandError(f"unix://{path} is not a socket") from None
        raise CommandError(f"cannot connect to unix://{path}: {exc.strerror}") from None
    finally:
        probe.close()


def _rpc_error(exc: ClientError, path: str) -> CommandError:
    if exc.code == "UNAVAILABLE":
        return _no_driver(path, "it stopped answering")
    if exc.code == "DEADLINE_EXCEEDED":
        return CommandError(f"the driver on unix://{path} did not answer in time; see its log")
    return CommandError(f"{exc.message} ({exc.code})")


def _emit(args: argparse.Namespace, columns: tuple[Column, ...], records: list[dict[str, Any]],
          kind: str) -> None:
    """Print records in the format -o asked for. Called only once everything is fetched,
    so a failure never leaves a table header behind."""
    fmt = getattr(args, "output", None) or ""
    if fmt in ("json", "yaml"):
        print(render({"kind": kind + "List", "items": records}, fmt))
    elif records or fmt == "wide":
        print(table(columns, records, wide=fmt == "wide"))
    else:
        print(f"No {kind.lower()}s found.", file=sys.stderr)


def _emit_one(args: argparse.Namespace, columns: tuple[Column, ...], record: dict[str, Any]
              ) -> None:
    fmt = getattr(args, "output", None) or ""
    if fmt in ("json", "yaml"):
        print(render(record, fmt))
    else:
        print(table(columns, [record], wide=fmt == "wide"))


# --- volumes ---------------------------------------------------------------------------


def volume_record(vol: VolumeInfo, nodes: tuple[str, ...] = (),
                  problems: tuple[str, ...] = ()) -> dict[str, Any]:
    """A volume as the CLI shows it. `nodes` are the nodes it is published on, as
    ListVolumes reports them; `problems` are its health entries as "Reason: message"
    (empty when healthy)."""
    fs_type = vol.context.get("fsType", "")
    abnormal = bool(problems)
    return {
        "name": vol.context.get("name", ""),
        "id": vol.volume_id,
        "size": format_size(vol.capacity_bytes),
        "capacityBytes": vol.capacity_bytes,
        "type": fs_type or "block",
        "provisioning": vol.context.get("provisioning", ""),
        "state": "Abnormal" if abnormal else "Published" if nodes else "Available",
        "nodes": list(nodes),
        "condition": "; ".join(problems),
    }


def find_volume(client: Client, name_or_id: str) -> ListedVolume | None:
    """The volume whose id or name is `name_or_id` (an id wins), or None."""
    by_name = None
    for entry in client.list_volumes():
        if entry.volume.volume_id == name_or_id:
            return entry
        if by_name is None and entry.volume.context.get("name") == name_or_id:
            by_name = entry
    return by_name


def _volume_id(client: Client, name_or_id: str) -> str:
    entry = find_volume(client, name_or_id)
    if entry is None:
        raise CommandError(f'volume "{name_or_id}" not found (give its name or id;'
                           " `csi-py volume list` shows them)")
    return entry.volume.volume_id


def _create(client: Client, args: argparse.Namespace, fs_type: str,
            params: dict[str, str] | None = None, **source: str) -> VolumeInfo:
    """CreateVolume with the name, size and access type from the command line; prints
    the volume and, on stderr, why its size differs from the one asked for. `source`
    names the snapshot or volume to copy, if any."""
    vol = client.create_volume(args.name, args.size or 0, block=args.block, fs_type=fs_type,
                               parameters=params, **source)
    if args.size and vol.capacity_bytes > args.size:
        made_fs = vol.context.get("fsType", "") or fs_type
        floor = MIN_FS_BYTES.get(made_fs, 0) if not args.block else 0
        why = (f"the smallest {made_fs} volume is {format_size(floor)}"
               if floor and vol.capacity_bytes == floor else
               "the driver rounds sizes up to its granularity or the source's size")
        print(f"note: asked for {format_size(args.size)}; created {format_size(vol.capacity_bytes)}"
              f" ({why})", file=sys.stderr)
    _emit_one(args, VOLUME_COLUMNS, volume_record(vol))
    return vol


def volume_create(client: Client, args: argparse.Namespace) -> None:
    params = {"provisioning": "thick"} if args.thick else {}
    if args.fs_type:
        params["fsType"] = args.fs_type
    vol = _create(client, args, args.fs_type, params)
    if getattr(args, "output", None) not in ("json", "yaml"):
        affinity = ", ".join(f"{k}={v}" for k, v in vol.topology.items())
        print(f"# for a static PV: spec.csi.volumeHandle={vol.volume_id}; node affinity"
              f" {affinity}", file=sys.stderr)


def volume_list(client: Client, args: argparse.Namespace) -> None:
    volumes = list(client.list_volumes())
    health = client.all_volume_health() if volumes else {}
    records = [volume_record(e.volume, e.published_node_ids, health.get(e.volume.volume_id, ()))
               for e in volumes]
    _emit(args, VOLUME_COLUMNS, records, "Volume")


def volume_get(client: Client, args: argparse.Namespace) -> None:
    entry = find_volume(client, args.volume)
    if entry is None:
        raise CommandError(f'volume "{args.volume}" not found')
    problems = client.volume_health(entry.volume.volume_id)
    _emit_one(args, VOLUME_COLUMNS, volume_record(entry.volume, entry.published_node_ids,
                                                  problems))


def volume_delete(client: Client, args: argparse.Namespace) -> None:
    # DeleteVolume answers OK for an absent volume (CSI deletes are idempotent); a
    # person who mistyped must hear about it, so look first.
    entry = find_volume(client, args.volume)
    if entry is None:
        if args.ignore_not_found:
            return
        raise CommandError(f'volume "{args.volume}" not found; nothing deleted'
                           " (--ignore-not-found makes this a success)")
    vid = entry.volume.volume_id
    client.delete_volume(vid)
    name = entry.volume.context.get("name", "")
    print(f'volume "{name}" ({vid}) deleted' if name else f"volume {vid} deleted")


def volume_copy(client: Client, args: argparse.Namespace) -> None:
    """`volume restore SNAPSHOT NAME` and `volume clone VOLUME NAME`."""
    if args.action == "restore":
        _create(client, args, "", snapshot_id=args.source)
    else:
        _create(client, args, "", source_volume_id=_volume_id(client, args.source))


# --- snapshots -------------------------------------------------------------------------


def snapshot_record(snap: SnapshotInfo) -> dict[str, Any]:
    return {
        "id": snap.snapshot_id,
        "sourceVolumeId": snap.source_volume_id,
        "size": format_size(snap.size_bytes),
        "sizeBytes": snap.size_bytes,
        "readyToUse": snap.ready_to_use,
        "created": snap.created.isoformat(timespec="seconds") + "Z",
    }


def snapshot_create(client: Client, args: argparse.Namespace) -> None:
    vid = _volume_id(client, args.volume)
    snap = _create_snapshot_with_progress(client, vid, args.name)
    _emit_one(args, SNAPSHOT_COLUMNS, snapshot_record(snap))


def snapshot_list(client: Client, args: argparse.Namespace) -> None:
    vid = _volume_id(client, args.volume) if args.volume else ""
    _emit(args, SNAPSHOT_COLUMNS, [snapshot_record(s) for s in client.list_snapshots(vid)],
          "Snapshot")


def snapshot_delete(client: Client, args: argparse.Namespace) -> None:
    # As for volumes: DeleteSnapshot is idempotent, so look first.
    if not any(s.snapshot_id == args.snapshot_id
               for s in client.list_snapshots(snapshot_id=args.snapshot_id)):
        if args.ignore_not_found:
            return
        raise CommandError(f'snapshot "{args.snapshot_id}" not found; nothing deleted'
                           " (--ignore-not-found makes this a success)")
    client.delete_snapshot(args.snapshot_id)
    print(f"snapshot {args.snapshot_id} deleted")


def _create_snapshot_with_progress(client: Client, volume_id: str, name: str) -> SnapshotInfo:
    """CreateSnapshot, printing the progress of a copy-based capture while it runs.

    The driver reports a copy's progress in a file in its pool (the pool is named in
    GetPluginInfo's manifest); a reflink capture finishes before there is anything
    to show.
    """
    from concurrent.futures import ThreadPoolExecutor

    from csi_py.linux.progress import progress_file_name

    manifest = client.plugin_info(timeout=10).manifest
    progress_path = os.path.join(manifest.get("pool", ""), "snapshots", progress_file_name(name))
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(client.create_snapshot, volume_id, name, timeout=None)
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
        return future.result()


# --- info ------------------------------------------------------------------------------


def info(client: Client, args: argparse.Namespace) -> None:
    plugin = client.plugin_info(timeout=10)
    node = client.node_info(timeout=10)
    ready = client.probe(timeout=10)
    available = client.available_capacity(timeout=10)
    record: dict[str, Any] = {
        "driver": plugin.name, "version": plugin.vendor_version, "node": node.node_id,
        "topology": node.topology, "ready": ready,
        "availableBytes": available, "pool": plugin.manifest.get("pool", ""),
    }
    fmt = getattr(args, "output", None) or ""
    if fmt in ("json", "yaml"):
        print(render(record, fmt))
        return
    topology = ", ".join(f"{k}={v}" for k, v in record["topology"].items())
    print(f"driver:    {plugin.name} {plugin.vendor_version}")
    print(f"node:      {node.node_id} ({topology})")
    print(f"ready:     {'yes' if ready else 'no'}")
    print(f"available: {format_size(available)} for a new thin volume")

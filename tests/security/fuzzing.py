"""Hypothesis strategies for hostile CSI requests, built field by field from the proto
descriptors, and the harness that sends them through real gRPC.

Every string field gets path separators, `..`, NUL and other control characters,
unicode, oversized values and shell metacharacters; sizes are huge and negative; maps
are huge; capabilities carry random access types, unknown modes, unknown filesystems and
smuggled mount flags. Ids are sometimes real (volumes, snapshots and a group that exist,
one volume staged and published) so that the fuzzing reaches past the first checks.
Path fields are either inside the sandbox's area (where a target may legitimately be
made) or hostile; arbitrary absolute paths are never generated, so a driver bug cannot
touch anything outside the test's directory.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import grpc
from hypothesis import strategies as st

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.domain.snapshot_ids import file_key
from tests.conftest import NODE_ID
from tests.security.sandbox import Sandbox

# Requests sent by every fuzz test in this process; printed at the end of the run.
SENT = {"requests": 0}
_count = threading.Lock()

# Answers a hostile request may get: success, or a status the spec defines for bad
# input or state. Never UNKNOWN, INTERNAL, UNAVAILABLE or DEADLINE_EXCEEDED.
SPEC_CODES = frozenset({
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})
# Services we do not serve answer UNIMPLEMENTED, as the spec asks.
UNSERVED = {"SnapshotMetadata"}

NASTY = [
    "", " ", ".", "..", "../", "../../../../etc/passwd", "/etc/passwd", "/", "//",
    "vol-", "vol-" + "0" * 32, "vol-" + "0" * 31 + "/", "vol-../../../sentinel/passwd",
    "vol-" + "a" * 32 + "/../../x", "VOL-" + "A" * 32, "vol-" + "0" * 32 + "\n",
    "vol-" + "0" * 32 + "\x00", "vol-" + "0" * 32 + ".img", "snap-" + "0" * 32,
    "snap-../../x", "snap-" + "0" * 32 + ".other-node", "snap-" + "0" * 32 + "~" + "0" * 24,
    "snap-" + "0" * 32 + "./../../x", "snap-" + "0" * 32 + ".", "group-" + "0" * 32,
    "group-../x", "\x00", "\x00" * 10, "a\x00b",
    "a" * 128, "a" * 129, "a" * 4096, "é" * 64, "é" * 65, "\u202e\u0644", "\ufeff",
    "\U0001f4a5" * 40, "%s%n%x", "${IFS}", "$(reboot)", "`id`", "; rm -rf /",
    "| cat /etc/shadow", "\r\n", "\t", "*", "?", "~root", "-rf", "--help",
    "C:\\Windows", "\\\\server\\share", "file:///etc/passwd", "csi.storage.k8s.io/pvc/name",
    "ext4", "xfs", "btrfs", "thin", "thick", "true", "false", "-1", "0", "99999999999999999999",
]
FLAGS = [
    "rw,suid", "suid", "dev", "exec", "bind", "rbind", "remount", "defaults", "nosuid",
    "nodev", "noexec", "ro", "rw", "data=ordered", "data=journal,suid", "uid=0",
    "context=system_u:object_r:etc_t:s0", "x-mount.mkdir", "=", ",", ",,", "\x00",
    "ro\x00suid", "loop", "errors=remount-ro", "errors=panic", "noatime", "discard",
    "commit=5", "commit=5,dev", "subvol=/", "subvol=../..", "nouuid", "sync ,dev",
    "defaults,dev", " suid", "suid ", "SUID", "nosuid\x00,suid", "a" * 200,
]
PARAM_KEYS = ["fsType", "provisioning", "csi.storage.k8s.io/pvc/name", "type", "../x", ""]
PARAM_VALUES = ["ext4", "xfs", "btrfs", "thin", "thick", "", "ext4 -O ^has_journal",
                "ext4,suid", "ext4;id", "../../x", "THIN", "vfat", "tmpfs"]
MUTABLE_KEYS = ["directIO", "readAheadKiB", "iops", ""]
MUTABLE_VALUES = ["true", "false", "0", "128", "65536", "65537", "-1", "1e3", "²", "", " 64"]
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
EPHEMERAL_VALUES = ["true", "false", "TRUE", "16Mi", "32Mi", "-1", "0", "1e9", "99999999Ti",
                    "16Mi; rm -rf /", "ext4", "xfs", "vfat", "ext4,suid", "../../x", ""]
INLINE_HANDLES = ["csi-inline-0123abcd", "csi-inline-2"]
SIZES = [0, -1, 1, 4095, 4096, 1 << 20, 16 << 20, 32 << 20, 64 << 20, 300 << 20,
         (1 << 31) - 1, 1 << 40, (1 << 63) - 1, -(1 << 63), 1 << 62]


# What may follow a real snapshot's key (snap-<hex>): another node, hostile node parts,
# a digest of the wrong length, a path.
SNAPSHOT_ID_TAILS = [
    "", ".other-node", "~" + "0" * 24, "~" + "0" * 23, "~", ".", "..", "./../../sentinel",
    ".a/b", ".a\x00", ".a\n", "." + "n" * 91, ".é", ".-x", ".img", "/../x", ".other~" + "0" * 24,
]


def text(max_size: int = 200) -> st.SearchStrategy[str]:
    """Any unicode (NUL, control characters, RTL marks ...), or a known nasty string."""
    return st.one_of(st.text(max_size=max_size), st.sampled_from(NASTY),
                     st.text(alphabet="./\\\x00-_~ve", max_size=40))


def relative_text() -> st.SearchStrategy[str]:
    """Text that is never an absolute path (those could name anything on the host)."""
    return text().filter(lambda s: not s.startswith("/"))


def huge_map(entries: int, value_len: int) -> dict[str, str]:
    return {f"k{i:04d}": "v" * value_len for i in range(entries)}


def string_map(keys: list[str], values: list[str]) -> st.SearchStrategy[dict[str, str]]:
    small = st.dictionaries(st.one_of(st.sampled_from(keys), text(60)),
                            st.one_of(st.sampled_from(values), text(60)), max_size=5)
    big = st.builds(huge_map, st.integers(0, 400), st.integers(0, 120))
    return st.one_of(small, small, small, big)


class Targets:
    """What the strategies may use as real ids and paths."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.volume_ids: list[str] = []
        self.snapshot_ids: list[str] = []
        self.group_ids: list[str] = []

    def ids(self) -> st.SearchStrategy[str]:
        real = self.volume_ids + self.snapshot_ids + self.group_ids
        choices = [text(), st.sampled_from(NASTY)]
        if real:
            choices.append(st.sampled_from(real))
        if self.snapshot_ids:
            choices.append(self.snapshot_id_variants())
        return st.one_of(*choices)

    def snapshot_id_variants(self) -> st.SearchStrategy[str]:
        """A real snapshot's key with another node part: a foreign node, or hostile."""
        keys = sorted({file_key(i) for i in self.snapshot_ids})
        return st.builds(lambda key, tail: key + tail, st.sampled_from(keys),
                         st.sampled_from(SNAPSHOT_ID_TAILS))

    def paths(self) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(self.sandbox.good_paths()),
                         st.sampled_from(self.sandbox.hostile_paths()),
                         st.sampled_from(self.sandbox.hostile_paths()),
                         relative_text())


_MODE = pb.VolumeCapability.AccessMode.Mode
VALID_CAPS = [
    pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs, mount_flags=flags),
                        access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    for fs in ("", "ext4") for flags in ([], ["noatime"])
    for mode in (_MODE.SINGLE_NODE_WRITER, _MODE.SINGLE_NODE_MULTI_WRITER)
] + [
    pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                        access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    for mode in (_MODE.SINGLE_NODE_WRITER, _MODE.SINGLE_NODE_READER_ONLY)
]


def capability() -> st.SearchStrategy[pb.VolumeCapability]:
    mount = st.builds(
        pb.VolumeCapability.MountVolume,
        fs_type=st.one_of(st.sampled_from(["", "ext4", "xfs", "btrfs", "vfat", "ext4,suid"]),
                          text(40)),
        mount_flags=st.lists(st.one_of(st.sampled_from(FLAGS), text(40)), max_size=4),
        volume_mount_group=st.one_of(st.just(""), text(20)),
    )
    mode = st.one_of(st.none(), st.integers(-3, 12).map(
        lambda m: pb.VolumeCapability.AccessMode(mode=m)))

    @st.composite
    def build(draw: Any) -> pb.VolumeCapability:
        cap = pb.VolumeCapability()
        kind = draw(st.sampled_from(["mount", "block", "none"]))
        if kind == "mount":
            cap.mount.CopyFrom(draw(mount))
        elif kind == "block":
            cap.block.SetInParent()
        access = draw(mode)
        if access is not None:
            cap.access_mode.CopyFrom(access)
        return cap

    return build()


def valid_value(field: Any, targets: Targets) -> st.SearchStrategy[Any]:
    """A value the driver accepts for this field (so that hostile values in the other
    fields are met deep inside the driver, not only by the first check)."""
    name, t = field.name, targets
    area = t.sandbox.area
    if field.message_type is not None:
        msg = field.message_type.name
        if msg.endswith("Entry"):
            return st.sampled_from({
                "parameters": [{}, {"fsType": "ext4"}, {"provisioning": "thin"},
                               {"provisioning": "thick"}],
                "mutable_parameters": [{}, {"readAheadKiB": "256"}, {"directIO": "false"}],
                "publish_context": [{}, {"node": NODE_ID, "readonly": "false"}],
                "volume_context": [{}, {EPHEMERAL: "true", "size": "16Mi"},
                                   {EPHEMERAL: "true", "fsType": "ext4"}],
            }.get(name, [{}]))
        if msg == "VolumeCapability":
            cap = st.sampled_from(VALID_CAPS)
            return st.lists(cap, min_size=1, max_size=1) if _repeated(field) else cap
        if msg == "CapacityRange":
            return st.builds(pb.CapacityRange,
                             required_bytes=st.sampled_from([0, 16 << 20, 32 << 20, 48 << 20]),
                             limit_bytes=st.sampled_from([0, 64 << 20]))
        if msg == "VolumeContentSource":
            return st.one_of(
                st.sampled_from(t.snapshot_ids or [""]).map(lambda i: pb.VolumeContentSource(
                    snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=i))),
                st.sampled_from(t.volume_ids or [""]).map(lambda i: pb.VolumeContentSource(
                    volume=pb.VolumeContentSource.VolumeSource(volume_id=i))))
        if msg == "Topology":
            return st.just(pb.Topology(segments={"topology.loop.csi-py.io/node": NODE_ID}))
        if msg == "TopologyRequirement":
            return st.just(pb.TopologyRequirement(requisite=[
                pb.Topology(segments={"topology.loop.csi-py.io/node": NODE_ID})]))
        raise AssertionError(f"no strategy for {name}: {msg}")
    if field.type == field.TYPE_BOOL:
        return st.booleans()
    if field.type in (field.TYPE_INT32, field.TYPE_INT64):
        return st.integers(0, 5)
    if name == "source_volume_ids":
        return st.sampled_from([t.volume_ids[:1], t.volume_ids[1:], t.volume_ids])
    if name == "snapshot_ids":
        return st.just([])
    if name.endswith("snapshot_id"):
        return st.sampled_from(t.snapshot_ids or [""])
    if name == "group_snapshot_id":
        return st.sampled_from(t.group_ids or [""])
    if name == "volume_id":  # also the handle kubelet gives an inline volume
        return st.sampled_from(t.volume_ids + INLINE_HANDLES)
    if name.endswith("volume_id"):
        return st.sampled_from(t.volume_ids or [""])
    if name == "node_id":
        return st.just(NODE_ID)
    if name == "staging_target_path":
        return st.sampled_from([f"{area}/stage0", f"{area}/stage1"])
    if name in ("target_path", "volume_path"):
        return st.sampled_from(t.sandbox.good_paths())
    if name == "starting_token":
        return st.just("")
    return st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-c", "fuzz-d", "fuzz-e"])


def field_value(field: Any, targets: Targets) -> st.SearchStrategy[Any]:
    """A hostile value for one field of a request, chosen by its name and type."""
    name = field.name
    if field.message_type is not None:
        msg = field.message_type.name
        if msg.endswith("Entry"):  # a map<string, string>
            if name == "parameters":
                return string_map(PARAM_KEYS, PARAM_VALUES)
            if name == "mutable_parameters":
                return string_map(MUTABLE_KEYS, MUTABLE_VALUES)
            if name == "publish_context":
                return string_map(["node", "readonly"], [NODE_ID, "true", "false", "x"])
            if name == "volume_context":  # an inline volume's: a pod author's input
                return string_map([EPHEMERAL, "size", "fsType", "password"], EPHEMERAL_VALUES)
            return string_map(["password", "token", "fsType"], ["hunter2", ""])
        if msg == "VolumeCapability":
            caps = st.lists(capability(), max_size=3)
            return caps if _repeated(field) else st.one_of(st.none(), capability())
        if msg == "CapacityRange":
            size = st.one_of(st.sampled_from(SIZES), st.integers(-(1 << 63), (1 << 63) - 1))
            return st.one_of(st.none(), st.builds(pb.CapacityRange, required_bytes=size,
                                                  limit_bytes=size))
        if msg == "VolumeContentSource":
            return st.one_of(
                st.none(), st.just(pb.VolumeContentSource()),
                targets.ids().map(lambda i: pb.VolumeContentSource(
                    snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=i))),
                targets.ids().map(lambda i: pb.VolumeContentSource(
                    volume=pb.VolumeContentSource.VolumeSource(volume_id=i))))
        if msg in ("TopologyRequirement", "Topology"):
            topo = st.builds(pb.Topology, segments=string_map(
                ["topology.loop.csi-py.io/node", "zone"], [NODE_ID, "elsewhere", ""]))
            if msg == "Topology":
                return st.one_of(st.none(), topo)
            return st.one_of(st.none(), st.builds(
                pb.TopologyRequirement, requisite=st.lists(topo, max_size=3),
                preferred=st.lists(topo, max_size=3)))
        raise AssertionError(f"no strategy for {name}: {msg}")
    if field.type == field.TYPE_BOOL:
        return st.booleans()
    if field.type in (field.TYPE_INT32, field.TYPE_INT64):
        bits = 31 if field.type == field.TYPE_INT32 else 63
        return st.one_of(st.sampled_from([0, -1, 1, 2, 1000, 1001]),
                         st.integers(-(1 << bits), (1 << bits) - 1))
    if field.type != field.TYPE_STRING:
        raise AssertionError(f"no strategy for {name}: type {field.type}")
    if name.endswith("_ids"):
        return st.lists(targets.ids(), max_size=4)
    if name.endswith("_id") and name != "node_id":
        return targets.ids()
    if name.endswith("_path"):
        return targets.paths()
    if name == "node_id":
        return st.one_of(st.just(NODE_ID), text())
    if name == "starting_token":
        return st.one_of(text(), st.integers(-5, 1 << 70).map(str))
    return st.one_of(text(), st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-c"]))


def _repeated(field: Any) -> bool:
    return bool(getattr(field, "is_repeated", False)) or \
        getattr(field, "label", None) == 3  # LABEL_REPEATED


def request(method: Any, targets: Targets) -> st.SearchStrategy[Any]:
    """Requests for one RPC: each field left unset (1 in 10), valid (6 in 10) or hostile
    (3 in 10), so most requests carry one or two hostile fields among valid ones."""
    cls = getattr(pb, method.input_type.name)

    @st.composite
    def build(draw: Any) -> Any:
        message = cls()
        for field in method.input_type.fields:
            roll = draw(st.integers(0, 9))
            if roll == 0:
                continue  # unset: the REQUIRED checks
            value = draw(valid_value(field, targets) if roll <= 6 else
                         field_value(field, targets))
            if value is None:
                continue
            target = getattr(message, field.name)
            if field.message_type is not None and field.message_type.name.endswith("Entry"):
                target.update(value)
            elif isinstance(value, list):
                target.extend(value)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(message, field.name, value)
        return message

    return build()


def methods() -> list[tuple[str, Any]]:
    """(service name, method descriptor) for every RPC of the proto."""
    return [(svc.name, m) for svc in pb.DESCRIPTOR.services_by_name.values()
            for m in svc.methods]


def stub_call(channel: grpc.Channel, service: str, method: Any) -> Callable[..., Any]:
    stub = getattr(csi_pb2_grpc, f"{service}Stub")(channel)
    return getattr(stub, method.name)


def send(call: Callable[..., Any], message: Any, service: str) -> grpc.StatusCode:
    """Send one request; return its status code after checking it is a spec code."""
    with _count:
        SENT["requests"] += 1
    try:
        call(message, timeout=60)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        allowed = {grpc.StatusCode.UNIMPLEMENTED} if service in UNSERVED else SPEC_CODES
        assert code in allowed, f"{code.name}: {exc.details()}\nrequest: {message!r}"[:3000]
    with _count:
        SENT[code.name] = SENT.get(code.name, 0) + 1
    return code


def tear_down_everything(client: Any, targets: Targets) -> None:
    """Undo whatever the fuzzing made: unpublish and unstage the real volumes at every
    path it may have used, then delete every group, snapshot and volume."""
    area = targets.sandbox.area
    paths = set(targets.sandbox.good_paths())
    for root, dirs, files in os.walk(area):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        paths.update(os.path.join(root, n) for n in dirs + files)
    ordered = sorted(paths, key=lambda p: -p.count("/"))
    c, n = client.controller, client.node
    # Inline volumes are taken down by their handle (kubelet's volume id).
    handles = _inline_handles(targets.sandbox.pool)
    for handle in handles:
        for path in ordered:
            _quiet(n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
                volume_id=handle, target_path=path))
    vids = set(targets.volume_ids)
    token = ""
    while True:
        page = c.ListVolumes(pb.ListVolumesRequest(starting_token=token), timeout=60)
        vids |= {e.volume.volume_id for e in page.entries}
        if not (token := page.next_token):
            break
    for vid in vids:
        for path in ordered:
            _quiet(n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
                volume_id=vid, target_path=path))
        for path in ordered + [os.path.join(targets.sandbox.pool, "ephemeral", vid)]:
            _quiet(n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
                volume_id=vid, staging_target_path=path))
        _quiet(c.ControllerUnpublishVolume, pb.ControllerUnpublishVolumeRequest(volume_id=vid))
    group = csi_pb2_grpc.GroupControllerStub(client.channel)
    snaps = c.ListSnapshots(pb.ListSnapshotsRequest(), timeout=60).entries
    for gid in {e.snapshot.group_snapshot_id for e in snaps if e.snapshot.group_snapshot_id}:
        _quiet(group.DeleteVolumeGroupSnapshot,
               pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid))
    for e in snaps:
        _quiet(c.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=e.snapshot.snapshot_id))
    for vid in vids:
        _quiet(c.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vid))


def _inline_handles(pool: str) -> list[str]:
    db = sqlite3.connect(os.path.join(pool, "catalog.db"))
    try:
        rows = db.execute("SELECT name FROM volumes WHERE name LIKE 'ephemeral-%'").fetchall()
    finally:
        db.close()
    return [name.removeprefix("ephemeral-") for (name,) in rows]


# Answers outside the spec's codes seen while tearing down (they are failures too).
TEARDOWN_SURPRISES: list[str] = []


def _quiet(call: Callable[..., Any], message: Any) -> None:
    try:
        call(message, timeout=60)
    except grpc.RpcError as exc:
        if exc.code() not in SPEC_CODES:
            TEARDOWN_SURPRISES.append(f"{exc.code().name}: {exc.details()}")

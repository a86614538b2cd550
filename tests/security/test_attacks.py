"""Named attacks through real gRPC, each its own test: path traversal in ids and names,
hostile target and staging paths (relative, `..`, symlinks to a sentinel), mount option
injection, huge and negative sizes, oversized names and maps.

After each: the sentinel tree is exactly as it was, nothing is mounted outside the
test's area, and the driver still answers Probe ready.
"""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain.snapshot_ids import file_key
from csi_py.rpc.client import block_capability, mount_capability
from tests.conftest import NODE_ID, needs_root
from tests.kernel_leaks import mounts_under
from tests.lifecycle import MiB, Volumes, create_request
from tests.reliability.harness import disagreements

pytestmark = [pytest.mark.integration, needs_root()]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OK = grpc.StatusCode.OK


def code_of(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=60)
        return OK
    except grpc.RpcError as exc:
        return exc.code()


@pytest.fixture
def guarded(driver, sandbox):
    """The sandbox, checked after the test: sentinel unchanged, nothing mounted outside
    the area, the driver ready, and nothing left in the pool or the kernel."""
    before = sandbox.fingerprint()
    yield sandbox
    assert sandbox.fingerprint() == before
    assert sandbox.foreign_mounts() == []
    assert driver.client.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []


TRAVERSAL_IDS = [
    "../../sentinel/passwd", "../../../../../etc/passwd", "vol-../../../sentinel/passwd",
    "vol-" + "0" * 32 + "/../../../sentinel/passwd", "vol-" + "0" * 32 + "\x00.img",
    "snap-../../sentinel/passwd", "group-../../sentinel", "/etc/passwd", "..", ".", "/",
    "vol-" + "0" * 32 + "/..", "vol-%2e%2e%2fsentinel",
]


@pytest.mark.parametrize("bad", TRAVERSAL_IDS)
def test_path_traversal_in_ids_never_reaches_the_filesystem(driver, guarded, bad):
    c, n = driver.client.controller, driver.client.node
    staging = os.path.join(guarded.area, "stage0")
    cap = mount_capability("ext4")
    # Deleting what does not exist is success (idempotent), and touches nothing.
    assert code_of(c.DeleteVolume, pb.DeleteVolumeRequest(volume_id=bad)) == OK
    assert code_of(c.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=bad)) == OK
    for call, request in [
        (n.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id=bad, staging_target_path=staging, volume_capability=cap)),
        (n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
            volume_id=bad, staging_target_path=staging)),
        (n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=bad, target_path=os.path.join(guarded.area, "t"))),
        (c.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
            volume_id=bad, node_id=NODE_ID, volume_capability=cap)),
        (c.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=bad, capacity_range=pb.CapacityRange(required_bytes=64 * MiB))),
        (c.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=bad)),
        (c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=bad)),
        (c.CreateSnapshot, pb.CreateSnapshotRequest(source_volume_id=bad, name="s")),
        (c.CreateVolume, create_request("from-bad-snap", "ext4", snapshot_id=bad)),
        (c.CreateVolume, create_request("from-bad-vol", "ext4", volume_id=bad)),
    ]:
        assert code_of(call, request) in (NOT_FOUND, INVALID), (call, bad)
    assert os.listdir(os.path.join(driver.pool, "volumes")) == []
    assert os.listdir(os.path.join(driver.pool, "snapshots")) == []


def test_path_traversal_in_names_only_ever_names_files_by_id(driver, guarded):
    v = Volumes(driver.client)
    name = "../../../sentinel/passwd"
    vid = v.create(name, "block").volume_id
    assert v.create(name, "block").volume_id == vid  # idempotent by name
    sid = v.snapshot(vid, "../../sentinel/dir/secret.txt").snapshot_id
    group = v.group_snapshot("../../../../etc/shadow", [vid])
    assert os.listdir(os.path.join(driver.pool, "volumes")) == [vid + ".img"]
    assert sorted(os.listdir(os.path.join(driver.pool, "snapshots"))) == sorted(
        [file_key(sid) + ".img"] + [file_key(s.snapshot_id) + ".img" for s in group.snapshots])
    v.delete_group(group.group_snapshot_id, [s.snapshot_id for s in group.snapshots])
    v.delete_snapshot(sid)
    v.delete(vid)


def test_relative_dotdot_and_symlinked_staging_and_target_paths_are_refused(
        driver, guarded):
    v = Volumes(driver.client)
    c, n = driver.client.controller, driver.client.node
    vid = v.create("victim", "ext4").volume_id
    v.attach(vid, "ext4")
    cap = mount_capability("ext4")
    bad_paths = [p for p in guarded.hostile_paths() if p]
    for bad in bad_paths:
        assert code_of(n.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=bad, volume_capability=cap)) == INVALID, bad
    staging = os.path.join(guarded.area, "stage0")
    v.stage(vid, "ext4", staging)
    try:
        for bad in bad_paths:
            request = pb.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=bad,
                volume_capability=cap)
            assert code_of(n.NodePublishVolume, request) == INVALID, bad
            # Unpublishing there must not follow the path elsewhere either (it used to
            # rmdir the sentinel's directory through a symlinked parent).
            assert code_of(n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
                volume_id=vid, target_path=bad)) in (OK, INVALID), bad
            assert code_of(n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
                volume_id=vid, volume_path=bad)) in (NOT_FOUND, INVALID), bad
            assert code_of(n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
                volume_id=vid, staging_target_path=bad)) in (OK, INVALID), bad
        assert mounts_under(guarded.sentinel) == []
        assert os.path.ismount(staging), "a refused call took the staging mount down"
    finally:
        v.unstage(vid, staging)
        c.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(volume_id=vid))
        v.delete(vid)


@pytest.mark.parametrize("kind", ["ext4", "block"])
def test_a_symlink_at_the_target_is_never_mounted_over(driver, guarded, kind):
    """The target is a symlink to a sentinel directory (or file, for block): the
    publish is refused and the sentinel is not mounted over."""
    v = Volumes(driver.client)
    vid = v.create("linked", kind).volume_id
    staging = os.path.join(guarded.area, "stage0")
    os.makedirs(staging, exist_ok=True)
    v.stage(vid, kind, staging)
    link = os.path.join(guarded.area, "ln" if kind == "ext4" else "lnfile")
    if kind == "block":
        os.symlink(os.path.join(guarded.sentinel, "passwd"), link)
    try:
        for target in (link, os.path.join(guarded.links, "emptydir"),
                       os.path.join(guarded.links, "file")):
            with pytest.raises(grpc.RpcError) as err:
                v.publish(vid, kind, staging, target)
            assert err.value.code() == INVALID and "symlink" in err.value.details()
        assert mounts_under(guarded.sentinel) == []
        assert os.path.islink(link)
    finally:
        if kind == "block":
            os.unlink(link)
        v.unstage(vid, staging)
        v.delete(vid)


INJECTED_FLAGS = [
    ["rw,suid"], ["suid"], ["dev"], ["exec"], ["data=ordered,suid"], ["defaults,dev"],
    ["nosuid\x00,suid"], ["noatime", "suid"], [" suid"], ["suid "], ["SUID"], ["uid=0"],
    ["context=system_u:object_r:etc_t:s0"], ["x-mount.mkdir"], ["remount"], ["bind"],
    ["commit=5,dev"], ["errors=remount-ro\x00,dev"], ["data=journal;suid"],
]


@pytest.mark.parametrize("flags", INJECTED_FLAGS, ids=repr)
def test_mount_option_injection_is_refused_everywhere(driver, guarded, flags):
    v = Volumes(driver.client)
    c, n = driver.client.controller, driver.client.node
    cap = mount_capability("ext4", flags=tuple(flags))
    vid = c.CreateVolume(create_request("inj", "ext4"), timeout=60).volume.volume_id
    bad = pb.CreateVolumeRequest(name="inj2", volume_capabilities=[cap],
                                 capacity_range=pb.CapacityRange(required_bytes=32 * MiB))
    assert code_of(c.CreateVolume, bad) == INVALID
    assert code_of(c.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
        volume_id=vid, node_id=NODE_ID, volume_capability=cap)) == INVALID
    confirmed = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=vid, volume_capabilities=[cap]), timeout=60)
    assert not confirmed.HasField("confirmed") and confirmed.message
    staging = os.path.join(guarded.area, "stage0")
    assert code_of(n.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=staging, volume_capability=cap)) == INVALID
    assert not os.path.ismount(staging)
    v.stage(vid, "ext4", staging)
    try:
        assert code_of(n.NodePublishVolume, pb.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap,
            target_path=os.path.join(guarded.area, "t"))) == INVALID
        assert not os.path.exists(os.path.join(guarded.area, "t"))
    finally:
        v.unstage(vid, staging)
        v.delete(vid)


def test_filesystems_are_always_mounted_nosuid_nodev(driver, guarded):
    v = Volumes(driver.client)
    vid = v.create("flags", "ext4").volume_id
    staging, target = os.path.join(guarded.area, "stage0"), os.path.join(guarded.area, "t")
    cap = mount_capability("ext4", flags=("noatime",))
    driver.client.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=staging, volume_capability=cap), timeout=60)
    driver.client.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=target,
        volume_capability=cap), timeout=60)
    try:
        for point in (staging, target):
            st = os.statvfs(point)
            assert st.f_flag & os.ST_NOSUID and st.f_flag & os.ST_NODEV, point
    finally:
        v.unpublish(vid, target)
        v.unstage(vid, staging)
        v.delete(vid)


@pytest.mark.parametrize("params", [
    {"fsType": "ext4 -O ^has_journal"}, {"fsType": "ext4;id"}, {"fsType": "ext4,suid"},
    {"fsType": "../../bin/sh"}, {"provisioning": "thick; rm -rf /"}, {"mkfsOptions": "-F"},
], ids=repr)
def test_parameter_injection_is_refused(driver, guarded, params):
    request = create_request("param", "ext4", params=params)
    assert code_of(driver.client.controller.CreateVolume, request) == INVALID


@pytest.mark.parametrize(("required", "limit", "codes"), [
    (-1, 0, {INVALID}), (0, -1, {INVALID}), (-(1 << 63), 0, {INVALID}),
    ((1 << 63) - 1, 0, {grpc.StatusCode.OUT_OF_RANGE}),
    (1 << 62, (1 << 63) - 1, {grpc.StatusCode.OUT_OF_RANGE}),
    (64 * MiB, 32 * MiB, {INVALID}), (1, 1, {grpc.StatusCode.OUT_OF_RANGE}),
    (1 << 50, 0, {grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}),
])
def test_huge_and_negative_sizes_create_nothing(driver, guarded, required, limit, codes):
    c = driver.client.controller
    for params in ({}, {"provisioning": "thick"}):
        request = pb.CreateVolumeRequest(
            name="sized", volume_capabilities=[block_capability()], parameters=params,
            capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit))
        assert code_of(c.CreateVolume, request) in codes
    assert os.listdir(os.path.join(driver.pool, "volumes")) == []


def test_huge_and_negative_expansion_changes_nothing(driver, guarded):
    v = Volumes(driver.client)
    c = driver.client.controller
    vid = v.create("grow", "block").volume_id
    image = os.path.join(driver.pool, "volumes", vid + ".img")
    for required, limit in ((-1, 0), (0, -1), ((1 << 63) - 1, 0), (1 << 50, 0),
                            (16 * MiB, 16 * MiB), (0, 0)):
        code = code_of(c.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=pb.CapacityRange(
                required_bytes=required, limit_bytes=limit)))
        assert code in (INVALID, grpc.StatusCode.OUT_OF_RANGE,
                        grpc.StatusCode.RESOURCE_EXHAUSTED), (required, limit, code)
        assert os.path.getsize(image) == 32 * MiB
    for entries in (-1, -(1 << 31)):
        assert code_of(c.ListVolumes, pb.ListVolumesRequest(max_entries=entries)) == INVALID
        assert code_of(c.ListSnapshots, pb.ListSnapshotsRequest(max_entries=entries)) == INVALID
    v.delete(vid)


def test_oversized_names_and_maps_are_refused(driver, guarded):
    c = driver.client.controller
    group = Volumes(driver.client).group()

    def create(name: str, **fields) -> grpc.StatusCode:
        return code_of(c.CreateVolume, pb.CreateVolumeRequest(
            name=name, volume_capabilities=[block_capability()],
            capacity_range=pb.CapacityRange(required_bytes=32 * MiB), **fields))

    assert create("a" * 129) == INVALID
    assert create("é" * 65) == INVALID  # 130 bytes
    assert create("a" * (1 << 20)) == INVALID
    assert create("p", parameters={f"csi.storage.k8s.io/k{i}": "v" * 100
                                   for i in range(50)}) == INVALID
    assert create("m", mutable_parameters={f"k{i}": "v" * 100 for i in range(50)}) == INVALID
    assert code_of(c.CreateSnapshot, pb.CreateSnapshotRequest(
        source_volume_id="vol-" + "0" * 32, name="s" * 129)) == INVALID
    assert code_of(group.CreateVolumeGroupSnapshot, pb.CreateVolumeGroupSnapshotRequest(
        name="g" * 129, source_volume_ids=["vol-" + "0" * 32])) == INVALID
    # Secrets are not used; big ones are ignored or refused, never a crash.
    assert create("s", secrets={f"k{i}": "v" * 100 for i in range(100)}) in (OK, INVALID)
    # Beyond gRPC's 4 MiB message limit the transport refuses it; the driver stays up.
    assert create("x", parameters={"k": "v" * (5 << 20)}) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    # The limits are exact: 128 bytes is fine.
    assert create("b" * 128) == OK
    assert create("é" * 64) == OK
    for entry in c.ListVolumes(pb.ListVolumesRequest(), timeout=60).entries:
        c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=entry.volume.volume_id), timeout=60)


INLINE = "csi.storage.k8s.io/ephemeral"


@pytest.mark.parametrize("context", [
    {INLINE: "true", "size": "-1"}, {INLINE: "true", "size": "1e309"},
    {INLINE: "true", "size": "99999999Ti"}, {INLINE: "true", "size": "16Mi; rm -rf /"},
    {INLINE: "true", "fsType": "vfat"}, {INLINE: "true", "fsType": "ext4,suid"},
    {INLINE: "true", "fsType": "../../bin/sh"}, {INLINE: "true", "mkfsOptions": "-F"},
], ids=repr)
def test_inline_volume_attributes_from_a_pod_are_refused(driver, guarded, context):
    """A pod author writes an inline volume's attributes: hostile ones are refused and
    nothing is made."""
    code = code_of(driver.client.node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id="csi-inline-attack", target_path=os.path.join(guarded.area, "t"),
        volume_capability=mount_capability("ext4"), volume_context=context))
    assert code in (INVALID, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert os.listdir(os.path.join(driver.pool, "volumes")) == []
    assert not os.path.exists(os.path.join(guarded.area, "t"))


def test_inline_volume_at_a_hostile_target_leaves_nothing_behind(driver, guarded):
    """The target is checked after the inline volume was made: it must be taken down
    again, not left staged with no way for kubelet to remove it."""
    n = driver.client.node
    for bad in [p for p in guarded.hostile_paths() if p]:
        code = code_of(n.NodePublishVolume, pb.NodePublishVolumeRequest(
            volume_id="csi-inline-attack", target_path=bad,
            volume_capability=mount_capability("ext4"),
            volume_context={INLINE: "true", "size": "16Mi"}))
        assert code == INVALID, bad
        assert disagreements(driver.workdir, driver.pool, expect_empty=True) == [], bad


def test_staging_and_target_paths_inside_the_pool_or_on_each_other_are_refused(
        driver, guarded):
    """A mount over the pool (its root, volumes, snapshots or records) would hide the
    images and the catalog; a publish onto its own staging path would be taken down
    with the staging mount. All INVALID_ARGUMENT, and nothing is mounted."""
    v = Volumes(driver.client)
    n = driver.client.node
    vid = v.create("pool-victim", "ext4").volume_id
    v.attach(vid, "ext4")
    cap = mount_capability("ext4")
    pool = driver.pool
    inside = [pool, os.path.join(pool, "volumes"), os.path.join(pool, "snapshots"),
              os.path.join(pool, "records"), os.path.join(pool, "volumes", "x"),
              os.path.join(pool, "records", "new")]
    for bad in inside:
        request = pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=bad,
                                            volume_capability=cap)
        with pytest.raises(grpc.RpcError) as err:
            n.NodeStageVolume(request, timeout=60)
        assert err.value.code() == INVALID and "pool" in err.value.details(), bad
    staging = os.path.join(guarded.area, "stage0")
    v.stage(vid, "ext4", staging)
    try:
        for bad in [*inside, staging, os.path.join(staging, "sub"), guarded.area]:
            request = pb.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=bad,
                volume_capability=cap)
            with pytest.raises(grpc.RpcError) as err:
                n.NodePublishVolume(request, timeout=60)
            assert err.value.code() == INVALID, (bad, err.value.details())
        assert mounts_under(pool) == []
        assert os.path.ismount(staging)
    finally:
        v.unstage(vid, staging)
        v.detach(vid)
        v.delete(vid)


def test_kernel_refusals_name_the_path_and_cause_and_are_never_internal(driver, guarded):
    v = Volumes(driver.client)
    n = driver.client.node
    vid = v.create("refused", "ext4").volume_id
    v.attach(vid, "ext4")
    # A component over NAME_MAX (the kernel's ENAMETOOLONG).
    long_path = os.path.join(guarded.area, "x" * 300, "stage")
    with pytest.raises(grpc.RpcError) as err:
        n.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=long_path,
            volume_capability=mount_capability("ext4")), timeout=60)
    assert err.value.code() == INVALID and "ENAMETOOLONG" in err.value.details()
    # An allow-listed option this filesystem does not take: mount(2) answers EINVAL.
    staging = os.path.join(guarded.area, "stage0")
    with pytest.raises(grpc.RpcError) as err:
        n.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging,
            volume_capability=mount_capability("ext4", flags=("ssd",))), timeout=60)
    assert err.value.code() == INVALID, err.value.details()
    assert "EINVAL" in err.value.details() and staging in err.value.details()
    assert not os.path.ismount(staging)
    v.detach(vid)
    v.delete(vid)


# Node parts a client might put after a real snapshot's key: a path, NUL, a line
# break, an oversized or malformed node, a wrong-length digest, another node.
FOREIGN_TAILS = [".other-node", "~" + "0" * 24, ".img"]  # (a node may be called "img")
HOSTILE_TAILS = ["./../../sentinel/passwd", ".a/b", "/../../sentinel", ".a\x00", ".a\n",
                 "." + "n" * 91, ".", "..", "~", "~" + "0" * 23, ".é", ".-x",
                 "~" + "0" * 24 + "/..", " "]


@pytest.mark.parametrize("tail", FOREIGN_TAILS + HOSTILE_TAILS)
def test_forged_node_parts_of_a_real_snapshot_id_touch_nothing(driver, guarded, tail):
    v = Volumes(driver.client)
    c = driver.client.controller
    vid = v.create("victim", "block").volume_id
    sid = v.snapshot(vid, "victim-snap").snapshot_id
    forged = file_key(sid) + tail
    foreign = tail in FOREIGN_TAILS
    # A well-formed id naming another node: deleting is refused, never a false OK.
    assert code_of(c.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=forged)) == (
        grpc.StatusCode.FAILED_PRECONDITION if foreign else OK)
    assert code_of(c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=forged)) == NOT_FOUND
    assert not c.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=forged), timeout=30).entries
    assert code_of(c.CreateVolume, create_request("from-forged", "block", snapshot_id=forged)) \
        == (grpc.StatusCode.RESOURCE_EXHAUSTED if foreign else NOT_FOUND)
    # The real snapshot is untouched and still the only one.
    assert os.listdir(os.path.join(driver.pool, "snapshots")) == [file_key(sid) + ".img"]
    assert [e.snapshot.snapshot_id for e in
            c.ListSnapshots(pb.ListSnapshotsRequest(), timeout=30).entries] == [sid]
    assert os.listdir(os.path.join(driver.pool, "volumes")) == [vid + ".img"]
    v.delete_snapshot(sid)
    v.delete(vid)

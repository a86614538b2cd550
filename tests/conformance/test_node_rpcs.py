"""Node service against the CSI v1.12 spec, through real gRPC against a real server with
real loop devices, filesystems and mounts: every REQUIRED field, every applicable row of
each RPC's error table, the idempotency rules and the second-NodePublish table, unsafe
paths and mount flags, and that a refused call leaves the node as it was.

Every test stages and publishes through a NodeSession, which unpublishes and unstages
in a finally; the `workdir` fixture fails any test that leaves a loop device or mount."""

from __future__ import annotations

import errno
import os
import stat

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Mode, mount_capability
from tests.conformance.helpers import (
    SMALL,
    XFS_MIN,
    MiB,
    NodeSession,
    create,
    expect_error,
    expect_required,
    loops_of,
    unknown_volume_id,
)
from tests.conftest import NODE_ID
from tests.lifecycle import BLOCK, EXT4

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode
NodeRPC = pb.NodeServiceCapability.RPC


def _mounts_at(path: str) -> list[list[str]]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split() for line in fh if line.split()[4] == path]


def _is_mounted(path: str) -> bool:
    return bool(_mounts_at(path))


@pytest.fixture
def node(node, driver):
    """The shared node session (conftest.py), with the directory "tgt" made for the
    mount volumes' targets."""
    os.makedirs(driver.path("tgt"), exist_ok=True)
    return node


def _stage_req(volume_id, path, cap=EXT4, **kwargs) -> pb.NodeStageVolumeRequest:
    request = pb.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=path,
                                        **kwargs)
    if cap is not None:
        request.volume_capability.CopyFrom(cap)
    return request


# --- NodeGetCapabilities, NodeGetInfo, unimplemented -----------------------------------


def test_node_capabilities_are_exactly_what_is_served(driver):
    rsp = driver.client.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
    advertised = {c.rpc.type for c in rsp.capabilities}
    assert advertised == {NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS,
                          NodeRPC.SINGLE_NODE_MULTI_WRITER, NodeRPC.EXPAND_VOLUME,
                          NodeRPC.GET_VOLUME_HEALTH, NodeRPC.GET_STORAGE_HEALTH}
    assert NodeRPC.VOLUME_MOUNT_GROUP not in advertised


def test_node_expand_volume_of_an_unpublished_volume_is_not_found(driver, vol):
    expect_error(driver.client.node.NodeExpandVolume,
                 pb.NodeExpandVolumeRequest(volume_id=vol.volume_id,
                                            volume_path=driver.path("tgt")),
                 Code.NOT_FOUND, vol.volume_id)


def test_node_get_info(driver):
    info = driver.client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
    assert info.node_id == NODE_ID
    assert info.max_volumes_per_node == 0  # no limit configured
    # The topology a volume reports is the node's own.
    vol = create(driver, "pvc-topo")
    assert [dict(t.segments) for t in vol.accessible_topology] == \
        [dict(info.accessible_topology.segments)]


# --- NodeStageVolume ------------------------------------------------------------------------


def test_stage_required_fields(driver, vol, node):
    stage = driver.client.node.NodeStageVolume
    path = driver.path("st")
    expect_error(stage, _stage_req("", path), Code.INVALID_ARGUMENT, "volume_id", "required")
    expect_error(stage, _stage_req(vol.volume_id, ""),
                 Code.INVALID_ARGUMENT, vol.volume_id, "staging_target_path", "required")
    expect_error(stage, _stage_req(vol.volume_id, path, cap=None),
                 Code.INVALID_ARGUMENT, vol.volume_id, "volume_capability", "required")
    no_mode = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())
    expect_error(stage, _stage_req(vol.volume_id, path, cap=no_mode),
                 Code.INVALID_ARGUMENT, vol.volume_id, "access_mode")
    assert not loops_of(driver, vol.volume_id) and not os.path.exists(path)


def test_stage_unknown_volume_is_not_found(driver, node):
    for volume_id in (unknown_volume_id(), "garbage"):
        expect_error(driver.client.node.NodeStageVolume,
                     _stage_req(volume_id, driver.path("st")),
                     Code.NOT_FOUND, volume_id, "does not exist")
    assert not os.path.exists(driver.path("st"))


def _symlinks(driver) -> dict[str, str]:
    """Paths that lead somewhere else through a symlink: the last component, or a parent."""
    os.makedirs(driver.path("elsewhere"), exist_ok=True)
    os.symlink(driver.path("elsewhere"), driver.path("link"))
    return {"last": driver.path("link"), "parent": driver.path("link", "x")}


@pytest.mark.parametrize("kind", ["relative", "dotdot", "last-symlink", "parent-symlink",
                                  "unnormalized"])
def test_stage_refuses_unsafe_staging_paths(driver, vol, node, kind):
    links = _symlinks(driver)
    path, words = {
        "relative": ("st/x", ("absolute",)),
        "dotdot": (driver.path("a", "..", "st"), ("'..'",)),
        "last-symlink": (links["last"], ("symlink",)),
        "parent-symlink": (links["parent"], ("symlink", driver.path("elsewhere"))),
        "unnormalized": (driver.path("a") + "//st", ("normalized",)),
    }[kind]
    expect_error(driver.client.node.NodeStageVolume, _stage_req(vol.volume_id, path),
                 Code.INVALID_ARGUMENT, vol.volume_id, "staging_target_path", path, *words)
    assert not loops_of(driver, vol.volume_id)
    assert not _is_mounted(driver.path("elsewhere"))
    assert os.listdir(driver.path("elsewhere")) == []


@pytest.mark.parametrize("flag", ["suid", "dev", "noatime,dev", "exec", "ro,suid",
                                  "errors=continue,dev"])
def test_stage_refuses_disallowed_mount_flags(driver, vol, node, flag):
    path = driver.path("st")
    expect_error(driver.client.node.NodeStageVolume,
                 _stage_req(vol.volume_id, path, cap=mount_capability("ext4", flags=(flag,))),
                 Code.INVALID_ARGUMENT, vol.volume_id, f"mount flag {flag!r}")
    assert not loops_of(driver, vol.volume_id) and not _is_mounted(path)


@pytest.mark.parametrize("mode", ["MULTI_NODE_READER_ONLY", "MULTI_NODE_MULTI_WRITER"])
def test_stage_refuses_multi_node_modes(driver, vol, node, mode):
    path = driver.path("st")
    expect_error(driver.client.node.NodeStageVolume,
                 _stage_req(vol.volume_id, path, cap=mount_capability(mode=Mode.Value(mode))),
                 Code.INVALID_ARGUMENT, vol.volume_id, mode)
    assert not loops_of(driver, vol.volume_id)


def test_stage_with_another_filesystem_is_failed_precondition(driver, vol, node):
    """Exceeds capabilities -> FAILED_PRECONDITION: the volume was made for ext4."""
    path = driver.path("st")
    expect_error(driver.client.node.NodeStageVolume,
                 _stage_req(vol.volume_id, path, cap=mount_capability("xfs")),
                 Code.FAILED_PRECONDITION, vol.volume_id, "ext4", "xfs")
    assert not loops_of(driver, vol.volume_id) and not _is_mounted(path)
    # Nothing was lost: it stages as ext4 afterwards.
    node.stage(vol.volume_id, path, EXT4)
    assert _mounts_at(path)[0][-3] == "ext4"


def test_stage_published_for_another_node_is_failed_precondition(driver, vol, node):
    path = driver.path("st")
    expect_error(driver.client.node.NodeStageVolume,
                 _stage_req(vol.volume_id, path, publish_context={"node": "other-node"}),
                 Code.FAILED_PRECONDITION, vol.volume_id, "other-node", NODE_ID)
    assert not loops_of(driver, vol.volume_id)


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_stage_is_idempotent(driver, node, fs):
    vol = create(driver, f"pvc-{fs}", size=SMALL if fs == "ext4" else XFS_MIN,
                 caps=[mount_capability(fs)])
    path = driver.path("st")
    cap = mount_capability(fs, flags=("noatime",))
    for _ in range(3):
        node.stage(vol.volume_id, path, cap)
    assert len(_mounts_at(path)) == 1
    assert _mounts_at(path)[0][-3] == fs
    assert len(loops_of(driver, vol.volume_id)) == 1
    # And after a restart: the kernel, not memory, says it is staged.
    driver.restart()
    node.stage(vol.volume_id, path, cap)
    assert len(_mounts_at(path)) == 1


def test_stage_block_is_idempotent(driver, vol, node):
    path = driver.path("st")
    node.stage(vol.volume_id, path, BLOCK)
    node.stage(vol.volume_id, path, BLOCK)
    assert len(loops_of(driver, vol.volume_id)) == 1
    assert not _is_mounted(path)  # a block volume's staging is only the attach


def test_stage_accepts_long_paths(driver, vol, node):
    """"SP MUST accept a max path length of at least 128 bytes"."""
    path = driver.path(*["d" * 60] * 4, "staging")
    assert len(path.encode()) > 250
    node.stage(vol.volume_id, path, EXT4)
    assert _is_mounted(path)


@pytest.mark.parametrize("other, words", [
    (mount_capability("ext4", flags=("noatime",)), ("noatime",)),
    (mount_capability("ext4", mode=Mode.SINGLE_NODE_READER_ONLY), ("readonly=False",)),
    (BLOCK, ("mount",)),
    (mount_capability("xfs"), ("fs=xfs",)),
])
def test_stage_same_path_other_capability_is_already_exists(driver, vol, node, other, words):
    path = driver.path("st")
    node.stage(vol.volume_id, path, EXT4)
    expect_error(driver.client.node.NodeStageVolume, _stage_req(vol.volume_id, path, other),
                 Code.ALREADY_EXISTS, vol.volume_id, path, "another capability", *words)
    # The staging is intact: same mount, and it publishes.
    assert len(_mounts_at(path)) == 1
    node.publish(vol.volume_id, path, driver.path("tgt", "t"), EXT4)


def test_stage_at_a_second_path_is_failed_precondition(driver, vol, node):
    """The CO SHALL ensure only one staging_target_path per volume; a second one is
    refused, naming where the volume is staged."""
    first, second = driver.path("st1"), driver.path("st2")
    node.stage(vol.volume_id, first, EXT4)
    expect_error(driver.client.node.NodeStageVolume, _stage_req(vol.volume_id, second),
                 Code.FAILED_PRECONDITION, vol.volume_id, first, second)
    assert not _is_mounted(second) and _is_mounted(first)


def test_stage_onto_a_path_occupied_by_another_volume_is_already_exists(driver, vol, node):
    other = create(driver, "pvc-other")
    path = driver.path("st")
    node.stage(other.volume_id, path, EXT4)
    expect_error(driver.client.node.NodeStageVolume, _stage_req(vol.volume_id, path),
                 Code.ALREADY_EXISTS, vol.volume_id, path, "already has")
    # Nothing of the refused volume is left, and the other volume is untouched...
    assert not loops_of(driver, vol.volume_id)
    assert len(_mounts_at(path)) == 1
    # ...also when the CO cleans up after the failed stage, as the spec allows.
    driver.client.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=path),
        timeout=60)
    assert len(_mounts_at(path)) == 1
    node.publish(other.volume_id, path, driver.path("tgt", "t"), EXT4)


# --- DeleteVolume while staged ----------------------------------------------------------


def test_delete_volume_while_staged_is_failed_precondition(driver, vol, node):
    path, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, path, EXT4)
    node.publish(vol.volume_id, path, target, EXT4)
    with open(os.path.join(target, "data"), "w") as fh:
        fh.write("keep me")
    expect_error(driver.client.controller.DeleteVolume,
                 pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                 Code.FAILED_PRECONDITION, vol.volume_id, "in use", "unstage")
    # Nothing was lost: still mounted, data readable, and it unpublishes and republishes.
    with open(os.path.join(target, "data")) as fh:
        assert fh.read() == "keep me"
    driver.client.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target), timeout=60)
    node.publish(vol.volume_id, path, target, EXT4)
    with open(os.path.join(target, "data")) as fh:
        assert fh.read() == "keep me"


# --- NodePublishVolume ----------------------------------------------------------------------


def test_publish_required_fields(driver, vol, node):
    publish = driver.client.node.NodePublishVolume
    staging, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, staging, EXT4)
    req = NodeSession.publish_request
    expect_error(publish, req("", staging, target, EXT4),
                 Code.INVALID_ARGUMENT, "volume_id", "required")
    expect_error(publish, req(vol.volume_id, staging, "", EXT4),
                 Code.INVALID_ARGUMENT, vol.volume_id, "target_path", "required")
    no_cap = req(vol.volume_id, staging, target, EXT4)
    no_cap.ClearField("volume_capability")
    expect_error(publish, no_cap, Code.INVALID_ARGUMENT, vol.volume_id, "volume_capability")
    assert not os.path.exists(target)


def test_publish_without_staging_path_is_failed_precondition(driver, vol, node):
    """NodePublishVolume Errors: "Staging target path not set" -> FAILED_PRECONDITION
    (we advertise STAGE_UNSTAGE_VOLUME; the field itself is OPTIONAL in the message)."""
    staging, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, staging, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, "", target, EXT4),
                 Code.FAILED_PRECONDITION, vol.volume_id, "staging_target_path",
                 "NodeStageVolume")
    assert not os.path.exists(target)


def test_publish_unknown_volume_is_not_found(driver, node):
    missing = unknown_volume_id()
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(missing, driver.path("st"),
                                             driver.path("tgt", "t"), EXT4),
                 Code.NOT_FOUND, missing, "does not exist")
    assert not os.path.exists(driver.path("tgt", "t"))


def test_publish_unstaged_volume_is_failed_precondition(driver, vol, node):
    staging, target = driver.path("st"), driver.path("tgt", "t")
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, staging, target, EXT4),
                 Code.FAILED_PRECONDITION, vol.volume_id, staging, "not staged",
                 "NodeStageVolume")
    assert not os.path.exists(target)
    # Staged somewhere else is not staged at the given path either.
    node.stage(vol.volume_id, staging, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, driver.path("st2"), target, EXT4),
                 Code.FAILED_PRECONDITION, vol.volume_id, driver.path("st2"), "not staged")
    assert not os.path.exists(target)


def test_publish_with_another_access_type_is_failed_precondition(driver, vol, node):
    staging, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, staging, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, staging, target, BLOCK),
                 Code.FAILED_PRECONDITION, vol.volume_id, "mount", "block")
    assert not os.path.exists(target)


@pytest.mark.parametrize("kind", ["relative", "dotdot", "last-symlink", "parent-symlink"])
def test_publish_refuses_unsafe_target_paths(driver, vol, node, kind):
    links = _symlinks(driver)
    staging = driver.path("st")
    node.stage(vol.volume_id, staging, EXT4)
    target, words = {
        "relative": ("tgt/t", ("absolute",)),
        "dotdot": (driver.path("tgt", "..", "t"), ("'..'",)),
        "last-symlink": (links["last"], ("symlink",)),
        "parent-symlink": (links["parent"], ("symlink",)),
    }[kind]
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, staging, target, EXT4),
                 Code.INVALID_ARGUMENT, vol.volume_id, "target_path", target, *words)
    assert not _is_mounted(driver.path("elsewhere"))
    assert os.listdir(driver.path("elsewhere")) == []


@pytest.mark.parametrize("flag", ["suid", "dev", "noatime,dev", "nodev,exec"])
def test_publish_refuses_disallowed_mount_flags(driver, vol, node, flag):
    staging, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, staging, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, staging, target,
                                             mount_capability("ext4", flags=(flag,))),
                 Code.INVALID_ARGUMENT, vol.volume_id, f"mount flag {flag!r}")
    assert not os.path.exists(target)


def test_publish_is_idempotent_and_honours_readonly(driver, vol, node):
    staging = driver.path("st")
    rw, ro = driver.path("tgt", "rw"), driver.path("tgt", "ro")
    node.stage(vol.volume_id, staging, mount_capability("ext4",
                                                        mode=Mode.SINGLE_NODE_MULTI_WRITER))
    cap = mount_capability("ext4", mode=Mode.SINGLE_NODE_MULTI_WRITER)
    for _ in range(2):
        node.publish(vol.volume_id, staging, rw, cap)
        node.publish(vol.volume_id, staging, ro, cap, readonly=True)
    assert len(_mounts_at(rw)) == 1 and len(_mounts_at(ro)) == 1
    with open(os.path.join(rw, "file"), "w") as fh:
        fh.write("x")
    with pytest.raises(OSError) as err:
        open(os.path.join(ro, "other"), "w").close()
    assert err.value.errno == errno.EROFS
    with open(os.path.join(ro, "file")) as fh:
        assert fh.read() == "x"


def test_publish_same_target_other_readonly_is_already_exists(driver, vol, node):
    staging, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, staging, EXT4)
    node.publish(vol.volume_id, staging, target, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, staging, target, EXT4,
                                             readonly=True),
                 Code.ALREADY_EXISTS, vol.volume_id, target, "readonly")
    # Still the one read-write mount.
    assert len(_mounts_at(target)) == 1
    open(os.path.join(target, "still-writable"), "w").close()


def test_publish_onto_a_target_occupied_by_another_volume_is_already_exists(
        driver, vol, node):
    other = create(driver, "pvc-other")
    st1, st2, target = driver.path("st1"), driver.path("st2"), driver.path("tgt", "t")
    node.stage(other.volume_id, st1, EXT4)
    node.publish(other.volume_id, st1, target, EXT4)
    open(os.path.join(target, "other-data"), "w").close()
    node.stage(vol.volume_id, st2, EXT4)
    expect_error(driver.client.node.NodePublishVolume,
                 NodeSession.publish_request(vol.volume_id, st2, target, EXT4),
                 Code.ALREADY_EXISTS, vol.volume_id, target, "not volume")
    assert len(_mounts_at(target)) == 1
    # A NodeUnpublish of the refused volume at that target must not take the other
    # volume's mount away: the refused volume is not published there.
    driver.client.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target),
        timeout=60)
    assert len(_mounts_at(target)) == 1
    assert sorted(os.listdir(target)) == ["lost+found", "other-data"]


@pytest.mark.parametrize("mode, second_ok", [
    ("SINGLE_NODE_MULTI_WRITER", True),
    ("SINGLE_NODE_SINGLE_WRITER", False),
    # The table says FAILED_PRECONDITION (a SHOULD) for these legacy modes too; we
    # deliberately allow them: COs without SINGLE_NODE_MULTI_WRITER support send
    # SINGLE_NODE_WRITER for ReadWriteOnce, whose pods on one node share the volume.
    ("SINGLE_NODE_WRITER", True),
    ("SINGLE_NODE_READER_ONLY", True),
])
def test_publish_at_a_second_target(driver, vol, node, mode, second_ok):
    """The second table of NodePublishVolume (we advertise SINGLE_NODE_MULTI_WRITER):
    T1!=T2 is OK for SINGLE_NODE_MULTI_WRITER and FAILED_PRECONDITION for
    SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod)."""
    cap = mount_capability("ext4", mode=Mode.Value(mode))
    staging, t1, t2 = driver.path("st"), driver.path("tgt", "t1"), driver.path("tgt", "t2")
    node.stage(vol.volume_id, staging, cap)
    node.publish(vol.volume_id, staging, t1, cap)
    if second_ok:
        node.publish(vol.volume_id, staging, t2, cap)
        assert _is_mounted(t2)
    else:
        expect_error(driver.client.node.NodePublishVolume,
                     NodeSession.publish_request(vol.volume_id, staging, t2, cap),
                     Code.FAILED_PRECONDITION, vol.volume_id, t1, mode, "unpublish")
        assert not os.path.exists(t2)
    # T1=T2, P1=P2 stays OK either way.
    node.publish(vol.volume_id, staging, t1, cap)


def test_block_publish_places_a_device_at_the_target(driver, vol, node):
    staging, target = driver.path("st"), driver.path("tgt", "blk")
    node.stage(vol.volume_id, staging, BLOCK)
    node.publish(vol.volume_id, staging, target, BLOCK)
    node.publish(vol.volume_id, staging, target, BLOCK)
    assert stat.S_ISBLK(os.stat(target).st_mode)
    with open(target, "rb") as fh:
        assert fh.seek(0, os.SEEK_END) == SMALL


# --- NodeUnpublishVolume ------------------------------------------------------------------


def test_unpublish_required_fields(driver, vol):
    unpublish = driver.client.node.NodeUnpublishVolume
    expect_required(unpublish, pb.NodeUnpublishVolumeRequest(
        volume_id=vol.volume_id, target_path=driver.path("t")), "volume_id", "target_path")
    expect_error(unpublish, pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id,
                                                          target_path="tgt/t"),
                 Code.INVALID_ARGUMENT, vol.volume_id, "tgt/t", "absolute")


def test_unpublish_unknown_volume_is_not_found(driver):
    missing = unknown_volume_id()
    expect_error(driver.client.node.NodeUnpublishVolume,
                 pb.NodeUnpublishVolumeRequest(volume_id=missing,
                                               target_path=driver.path("tgt", "t")),
                 Code.NOT_FOUND, missing, "does not exist")


@pytest.mark.parametrize("access", ["mount", "block"])
def test_unpublish_is_idempotent_and_removes_the_target(driver, vol, node, access):
    cap = EXT4 if access == "mount" else BLOCK
    staging, target = driver.path("st"), driver.path("tgt", "t")
    request = pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target)
    # Never published: OK.
    driver.client.node.NodeUnpublishVolume(request, timeout=60)
    node.stage(vol.volume_id, staging, cap)
    node.publish(vol.volume_id, staging, target, cap)
    for _ in range(2):
        driver.client.node.NodeUnpublishVolume(request, timeout=60)
        assert not _is_mounted(target)
        assert not os.path.lexists(target)  # "The SP MUST delete the file or directory"
    assert loops_of(driver, vol.volume_id)  # still staged


# --- NodeUnstageVolume ------------------------------------------------------------------


def test_unstage_required_fields(driver, vol):
    expect_required(driver.client.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=driver.path("st")),
        "volume_id", "staging_target_path")


def test_unstage_unknown_volume_is_not_found(driver):
    missing = unknown_volume_id()
    expect_error(driver.client.node.NodeUnstageVolume,
                 pb.NodeUnstageVolumeRequest(volume_id=missing,
                                             staging_target_path=driver.path("st")),
                 Code.NOT_FOUND, missing, "does not exist")


@pytest.mark.parametrize("access", ["mount", "block"])
def test_unstage_is_idempotent(driver, vol, node, access):
    cap = EXT4 if access == "mount" else BLOCK
    path = driver.path("st")
    request = pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=path)
    driver.client.node.NodeUnstageVolume(request, timeout=60)  # never staged: OK
    node.stage(vol.volume_id, path, cap)
    for _ in range(2):
        driver.client.node.NodeUnstageVolume(request, timeout=60)
        assert not _is_mounted(path)
        assert not loops_of(driver, vol.volume_id)
    # Deletable now.
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                                          timeout=60)


def test_unstage_at_a_path_where_it_is_not_staged_is_ok(driver, vol, node):
    """"If the volume corresponding to the volume_id is not staged to the
    staging_target_path, the Plugin MUST reply 0 OK" -- and leaves the real staging."""
    path = driver.path("st")
    node.stage(vol.volume_id, path, EXT4)
    driver.client.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id,
                                    staging_target_path=driver.path("elsewhere")),
        timeout=60)
    assert _is_mounted(path)
    node.publish(vol.volume_id, path, driver.path("tgt", "t"), EXT4)


def test_unstage_while_published_is_failed_precondition(driver, vol, node):
    path, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, path, EXT4)
    node.publish(vol.volume_id, path, target, EXT4)
    expect_error(driver.client.node.NodeUnstageVolume,
                 pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=path),
                 Code.FAILED_PRECONDITION, vol.volume_id, target, "unpublish")
    assert _is_mounted(path) and _is_mounted(target)
    # Still fully staged: publishing again is idempotent.
    node.publish(vol.volume_id, path, target, EXT4)


# --- NodeGetVolumeStats -------------------------------------------------------------------


def _stats(driver, volume_id, path) -> pb.NodeGetVolumeStatsResponse:
    return driver.client.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path), timeout=30)


def test_stats_required_fields(driver, vol):
    expect_required(driver.client.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=driver.path("t")), "volume_id", "volume_path")


def test_stats_not_found(driver, vol, node):
    missing = unknown_volume_id()
    stats = driver.client.node.NodeGetVolumeStats
    path, target = driver.path("st"), driver.path("tgt", "t")
    expect_error(stats, pb.NodeGetVolumeStatsRequest(volume_id=missing, volume_path=target),
                 Code.NOT_FOUND, missing, "does not exist")
    expect_error(stats, pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id,
                                                     volume_path=target),
                 Code.NOT_FOUND, vol.volume_id, "not staged")
    node.stage(vol.volume_id, path, EXT4)
    for where in (target, driver.path("tgt"), "relative/path"):
        expect_error(stats, pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id,
                                                         volume_path=where),
                     Code.NOT_FOUND, vol.volume_id, where)
    # The path of another volume is not this volume's.
    other = create(driver, "pvc-other")
    node.stage(other.volume_id, driver.path("st2"), EXT4)
    expect_error(stats, pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id,
                                                     volume_path=driver.path("st2")),
                 Code.NOT_FOUND, vol.volume_id, driver.path("st2"))


def test_stats_of_a_mounted_volume(driver, vol, node):
    path, target = driver.path("st"), driver.path("tgt", "t")
    node.stage(vol.volume_id, path, EXT4)
    node.publish(vol.volume_id, path, target, EXT4)
    with open(os.path.join(target, "blob"), "wb") as fh:
        fh.write(b"\1" * (4 * MiB))
        os.fsync(fh.fileno())
    for where in (target, path):  # published or staged path
        usage = {u.unit: u for u in _stats(driver, vol.volume_id, where).usage}
        size = usage[pb.VolumeUsage.BYTES]
        assert 0 < size.total <= SMALL
        assert size.used >= 4 * MiB and size.available > 0
        inodes = usage[pb.VolumeUsage.INODES]
        assert inodes.total > 0 and inodes.used > 0
        assert inodes.available == inodes.total - inodes.used


def test_stats_of_a_block_volume(driver, vol, node):
    path, target = driver.path("st"), driver.path("tgt", "blk")
    node.stage(vol.volume_id, path, BLOCK)
    node.publish(vol.volume_id, path, target, BLOCK)
    (usage,) = _stats(driver, vol.volume_id, target).usage
    assert usage.unit == pb.VolumeUsage.BYTES and usage.total == SMALL

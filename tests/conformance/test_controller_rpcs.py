"""Controller service against the CSI v1.12 spec, through real gRPC against a real
server: every REQUIRED field, every applicable row of each RPC's error table, the
idempotency rules, capacity_range rules, ListVolumes pagination and GetCapacity.

Every error is also checked for a message that names the volume (or name, node, token)
and the cause, and refused calls are checked to have changed nothing."""

from __future__ import annotations

import os

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Mode, block_capability, mount_capability
from tests.conformance.helpers import (
    SMALL,
    XFS_MIN,
    MiB,
    create,
    create_request,
    expect_error,
    topology_key,
    unknown_volume_id,
    volume_files,
)
from tests.conftest import NODE_ID

pytestmark = pytest.mark.conformance

Code = grpc.StatusCode
RPC = pb.ControllerServiceCapability.RPC
MULTI_NODE_MODES = ["MULTI_NODE_READER_ONLY", "MULTI_NODE_SINGLE_WRITER",
                    "MULTI_NODE_MULTI_WRITER"]


def _list_all(driver) -> list[pb.ListVolumesResponse.Entry]:
    return list(driver.client.controller.ListVolumes(pb.ListVolumesRequest(),
                                                     timeout=30).entries)


def _ids(driver) -> list[str]:
    return [e.volume.volume_id for e in _list_all(driver)]


def _publish_request(volume_id, node_id=NODE_ID, cap=None, readonly=False):
    return pb.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node_id,
        volume_capability=cap if cap is not None else mount_capability("ext4"),
        readonly=readonly,
    )


# --- ControllerGetCapabilities and what is not implemented --------------------------------


def test_controller_capabilities_are_exactly_what_is_served(driver):
    rsp = driver.client.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest(), timeout=10
    )
    advertised = {c.rpc.type for c in rsp.capabilities}
    assert advertised == {
        RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES,
        RPC.GET_CAPACITY, RPC.LIST_VOLUMES_PUBLISHED_NODES, RPC.PUBLISH_READONLY,
        RPC.SINGLE_NODE_MULTI_WRITER, RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS,
        RPC.CLONE_VOLUME, RPC.EXPAND_VOLUME, RPC.GET_VOLUME, RPC.MODIFY_VOLUME,
        RPC.GET_SNAPSHOT, RPC.GET_VOLUME_HEALTH, RPC.LIST_VOLUME_HEALTH,
    }


# --- CreateVolume: required fields and invalid fields -----------------------------------


def test_create_volume_requires_a_name(driver):
    expect_error(driver.client.controller.CreateVolume, create_request(""),
                 Code.INVALID_ARGUMENT, "name", "required")


def test_create_volume_requires_capabilities(driver):
    expect_error(driver.client.controller.CreateVolume, create_request("pvc-nocaps", caps=[]),
                 Code.INVALID_ARGUMENT, "pvc-nocaps", "volume_capabilities")
    assert volume_files(driver) == set()


def test_create_volume_capability_needs_access_type_and_mode(driver):
    no_type = pb.VolumeCapability(
        access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER))
    no_mode = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-notype", caps=[no_type]),
                 Code.INVALID_ARGUMENT, "pvc-notype", "access_type")
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-nomode", caps=[mount_capability(), no_mode]),
                 Code.INVALID_ARGUMENT, "pvc-nomode", "access_mode")
    assert volume_files(driver) == set()


@pytest.mark.parametrize("mode", MULTI_NODE_MODES)
def test_create_volume_refuses_multi_node_modes(driver, mode):
    """A loop device lives on one node: a MULTI_NODE capability can never be satisfied,
    and "If ANY of the specified volume capabilities are not supported by the SP, the
    call MUST return the appropriate gRPC error code"."""
    caps = [mount_capability("ext4"), mount_capability("ext4", mode=Mode.Value(mode))]
    expect_error(driver.client.controller.CreateVolume, create_request("pvc-multi", caps=caps),
                 Code.INVALID_ARGUMENT, "pvc-multi", mode, "SINGLE_NODE")
    assert volume_files(driver) == set()
    assert _ids(driver) == []


def test_create_volume_refuses_unknown_fs_type(driver):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-ntfs", caps=[mount_capability("ntfs")]),
                 Code.INVALID_ARGUMENT, "pvc-ntfs", "ntfs", "not supported")
    assert volume_files(driver) == set()


@pytest.mark.parametrize("flag", ["suid", "dev", "noatime,dev", "exec", "nosuid dev",
                                  "context=system_u:object_r:x", "data=../../x"])
def test_create_volume_refuses_disallowed_mount_flags(driver, flag):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-flags", caps=[mount_capability("ext4", flags=(flag,))]),
                 Code.INVALID_ARGUMENT, "pvc-flags", f"mount flag {flag!r}")
    assert volume_files(driver) == set()


def test_create_volume_accepts_allowed_mount_flags(driver):
    vol = create(driver, "pvc-okflags",
                 caps=[mount_capability("ext4", flags=("noatime", "nodev", "data=ordered"))])
    assert vol.volume_id


def test_create_volume_refuses_unknown_parameter_naming_the_key(driver):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-param", params={"fsType": "ext4", "replicas": "3"}),
                 Code.INVALID_ARGUMENT, "pvc-param", "replicas", "unknown parameter")
    assert volume_files(driver) == set()


def test_create_volume_ignores_provisioner_metadata_parameters(driver):
    vol = create(driver, "pvc-meta", params={"csi.storage.k8s.io/pvc/name": "data",
                                             "csi.storage.k8s.io/pvc/namespace": "default"})
    assert vol.volume_id


@pytest.mark.parametrize("params, words", [
    ({"fsType": "ntfs"}, ("fsType", "ntfs")),
    ({"provisioning": "fat"}, ("provisioning", "fat", "thin", "thick")),
    ({"fsType": "xfs"}, ("fsType", "xfs", "contradicts", "ext4")),  # the cap says ext4
])
def test_create_volume_refuses_bad_parameter_values(driver, params, words):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-badparam", params=params),
                 Code.INVALID_ARGUMENT, "pvc-badparam", *words)
    assert volume_files(driver) == set()


def test_create_volume_refuses_unknown_mutable_parameters(driver):
    request = create_request("pvc-mutable")
    request.mutable_parameters["iops"] = "100"
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.INVALID_ARGUMENT, "pvc-mutable", "iops")
    assert volume_files(driver) == set()


@pytest.mark.parametrize("source", ["snapshot", "volume"])
def test_create_volume_from_a_missing_source_is_not_found(driver, source):
    request = create_request("pvc-src")
    if source == "snapshot":
        request.volume_content_source.snapshot.snapshot_id = "snap-" + "0" * 32
    else:
        request.volume_content_source.volume.volume_id = unknown_volume_id()
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.NOT_FOUND, "pvc-src", source, "does not exist")
    assert volume_files(driver) == set()


def test_create_volume_name_size_limit(driver):
    """Strings are limited to 128 bytes (not characters)."""
    assert create(driver, "n" * 128).volume_id
    expect_error(driver.client.controller.CreateVolume, create_request("n" * 129),
                 Code.INVALID_ARGUMENT, "name", "128")
    expect_error(driver.client.controller.CreateVolume, create_request("é" * 65),
                 Code.INVALID_ARGUMENT, "name", "130 bytes")
    assert len(volume_files(driver)) == 1


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\x0c", "\x1f", "\x7f", "\x85",
                                  "\x9f"])
def test_create_volume_name_refuses_banned_characters(driver, char):
    """CreateVolumeRequest.name: "Any Unicode string that conforms to the length limit is
    allowed except those containing ... U+0000-U+0008, U+000B, U+000C, U+000E-U+001F,
    U+007F-U+009F"."""
    expect_error(driver.client.controller.CreateVolume, create_request(f"pvc{char}x"),
                 Code.INVALID_ARGUMENT, "name", "control character")
    assert volume_files(driver) == set()


def test_create_volume_name_allows_space_and_unicode(driver):
    """Space and any printable Unicode are fine in a name."""
    names = ["pvc x", "pvc-ünïcödé-卷"]
    ids = {create(driver, name).volume_id for name in names}
    assert len(ids) == len(names)
    # Idempotent for such names too.
    assert create(driver, "pvc x").volume_id in ids


def test_create_volume_name_refuses_line_breaks_and_tabs(driver):
    """The spec lets a CO send tab, LF and CR, but none does (Kubernetes names are
    DNS-1123), and a name is echoed in log lines and CLI tables, where a line break would
    split or forge a line: refused, like the other control characters."""
    for name in ("pvc\tx", "pvc\nx", "pvc\rx"):
        expect_error(driver.client.controller.CreateVolume, create_request(name),
                     Code.INVALID_ARGUMENT, "control character")
    assert volume_files(driver) == set()


def test_create_volume_refuses_oversized_parameter_map(driver):
    params = {"csi.storage.k8s.io/pad": "x" * 4100}
    expect_error(driver.client.controller.CreateVolume, create_request("pvc-big", params=params),
                 Code.INVALID_ARGUMENT, "pvc-big", "parameters", "4096")


# --- CreateVolume: capacity_range ------------------------------------------------------


def test_create_volume_negative_capacity_is_invalid(driver):
    expect_error(driver.client.controller.CreateVolume, create_request("pvc-neg", size=-1),
                 Code.INVALID_ARGUMENT, "pvc-neg", "negative")
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-neg", size=0, limit=-1 * MiB),
                 Code.INVALID_ARGUMENT, "pvc-neg", "negative")
    assert volume_files(driver) == set()


def test_create_volume_required_above_limit_is_invalid(driver):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-inverted", size=64 * MiB, limit=32 * MiB),
                 Code.INVALID_ARGUMENT, "pvc-inverted", str(64 * MiB), str(32 * MiB),
                 "larger than limit")
    assert volume_files(driver) == set()


def test_create_volume_limit_below_filesystem_minimum_is_out_of_range(driver):
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-tiny", size=0, limit=8 * MiB),
                 Code.OUT_OF_RANGE, "pvc-tiny", str(8 * MiB), "ext4", "at least")
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-tinyxfs", size=64 * MiB, limit=100 * MiB,
                                caps=[mount_capability("xfs")]),
                 Code.OUT_OF_RANGE, "pvc-tinyxfs", "xfs", str(XFS_MIN))
    assert volume_files(driver) == set()
    assert _ids(driver) == []


def test_create_volume_exact_size_off_the_granularity_is_out_of_range(driver):
    odd = 32 * MiB + 1
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-odd", size=odd, limit=odd),
                 Code.OUT_OF_RANGE, "pvc-odd", str(odd), "multiples")
    assert volume_files(driver) == set()


def test_create_volume_rounds_up_to_the_mib_granularity(driver):
    vol = create(driver, "pvc-round", size=32 * MiB + 1)
    assert vol.capacity_bytes == 33 * MiB
    with open(os.path.join(driver.pool, "volumes", vol.volume_id + ".img"), "rb") as fh:
        assert os.fstat(fh.fileno()).st_size == 33 * MiB


def test_create_volume_rounding_stays_within_the_limit(driver):
    vol = create(driver, "pvc-lim", size=0, limit=20 * MiB + 100)
    assert vol.capacity_bytes == 20 * MiB
    vol = create(driver, "pvc-range", size=20 * MiB + 1, limit=40 * MiB)
    assert vol.capacity_bytes == 21 * MiB


def test_create_volume_default_size_when_capacity_unset(driver):
    request = create_request("pvc-default")
    request.ClearField("capacity_range")
    vol = driver.client.controller.CreateVolume(request, timeout=60).volume
    assert vol.capacity_bytes == 1024 * MiB  # Config.default_size_bytes
    # A limit below the default caps it.
    vol = create(driver, "pvc-default-lim", size=0, limit=64 * MiB)
    assert vol.capacity_bytes == 64 * MiB


def test_create_volume_honours_the_filesystem_minimum(driver):
    xfs = create(driver, "pvc-xfs", size=32 * MiB, caps=[mount_capability("xfs")])
    assert xfs.capacity_bytes == XFS_MIN
    assert xfs.volume_context["fsType"] == "xfs"
    ext4 = create(driver, "pvc-ext4", size=1 * MiB)
    assert ext4.capacity_bytes == 16 * MiB
    block = create(driver, "pvc-block", size=1, caps=[block_capability()])
    assert block.capacity_bytes == 1 * MiB  # no filesystem, only the granularity


# --- CreateVolume: space and topology ----------------------------------------------------


def _capacity(driver, params=None, caps=None, topology=None) -> pb.GetCapacityResponse:
    request = pb.GetCapacityRequest(parameters=params or {}, volume_capabilities=caps or [])
    if topology is not None:
        request.accessible_topology.segments.update(topology)
    return driver.client.controller.GetCapacity(request, timeout=10)


@pytest.mark.parametrize("provisioning", ["thin", "thick"])
def test_create_volume_larger_than_the_pool_is_resource_exhausted(driver, provisioning):
    available = _capacity(driver, {"provisioning": provisioning}).available_capacity
    too_big = available + 1024 * MiB
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-huge", size=too_big,
                                params={"provisioning": provisioning}),
                 Code.RESOURCE_EXHAUSTED, "pvc-huge", str(too_big), provisioning, driver.pool)
    assert volume_files(driver) == set()
    assert _ids(driver) == []


def test_create_volume_in_another_topology_is_resource_exhausted(driver):
    request = create_request("pvc-elsewhere")
    key = topology_key(driver)
    request.accessibility_requirements.requisite.add().segments[key] = "other-node"
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.RESOURCE_EXHAUSTED, "pvc-elsewhere", "other-node", NODE_ID)
    assert volume_files(driver) == set()


def test_create_volume_reports_its_topology(driver):
    request = create_request("pvc-here")
    key = topology_key(driver)
    request.accessibility_requirements.requisite.add().segments[key] = "other-node"
    request.accessibility_requirements.requisite.add().segments[key] = NODE_ID
    request.accessibility_requirements.preferred.add().segments[key] = NODE_ID
    vol = driver.client.controller.CreateVolume(request, timeout=60).volume
    assert [dict(t.segments) for t in vol.accessible_topology] == [{key: NODE_ID}]


# --- CreateVolume: idempotency ----------------------------------------------------------


def test_create_volume_is_idempotent(driver):
    request = create_request("pvc-idem", params={"provisioning": "thin"})
    first = driver.client.controller.CreateVolume(request, timeout=60).volume
    second = driver.client.controller.CreateVolume(request, timeout=60).volume
    assert first == second
    assert first.volume_id and first.capacity_bytes >= SMALL
    assert volume_files(driver) == {first.volume_id + ".img"}
    # A compatible request (a smaller requirement the volume satisfies) is also OK.
    third = create(driver, "pvc-idem", size=16 * MiB, params={"provisioning": "thin"})
    assert third == first
    # After a restart too: the catalog, not memory, answers.
    driver.restart()
    assert driver.client.controller.CreateVolume(request, timeout=60).volume == first


@pytest.mark.parametrize("change, words", [
    ({"size": 64 * MiB}, (str(SMALL), "less than the required", str(64 * MiB))),
    ({"size": 16 * MiB, "limit": 16 * MiB}, ("more than the limit",)),
    ({"params": {"provisioning": "thick"}}, ("thin", "thick")),
    ({"params": {"fsType": "ext4"}}, ("other parameters",)),
    ({"caps": [mount_capability("xfs")], "size": XFS_MIN}, ("ext4", "xfs")),
])
def test_create_volume_same_name_incompatible_is_already_exists(driver, change, words):
    original = create(driver, "pvc-taken")
    kwargs = {"size": SMALL, **change}
    request = create_request("pvc-taken", **kwargs)
    expect_error(driver.client.controller.CreateVolume, request,
                 Code.ALREADY_EXISTS, "pvc-taken", original.volume_id, *words)
    # Nothing changed: the same single volume, unchanged.
    assert volume_files(driver) == {original.volume_id + ".img"}
    assert [e.volume for e in _list_all(driver)] == [original]


# --- DeleteVolume ------------------------------------------------------------------------


def test_delete_volume_requires_an_id(driver):
    expect_error(driver.client.controller.DeleteVolume, pb.DeleteVolumeRequest(),
                 Code.INVALID_ARGUMENT, "volume_id", "required")


@pytest.mark.parametrize("volume_id", [unknown_volume_id(), "no-such-volume", "../../etc/passwd",
                                       "x" * 300])
def test_delete_unknown_volume_is_ok(driver, volume_id):
    keep = create(driver, "pvc-keep")
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id),
                                          timeout=30)
    assert _ids(driver) == [keep.volume_id]


def test_delete_volume_is_idempotent(driver):
    vol = create(driver, "pvc-del")
    request = pb.DeleteVolumeRequest(volume_id=vol.volume_id)
    driver.client.controller.DeleteVolume(request, timeout=30)
    assert volume_files(driver) == set()
    driver.client.controller.DeleteVolume(request, timeout=30)
    assert _ids(driver) == []
    # The name is free again, for a new volume with a new id.
    assert create(driver, "pvc-del").volume_id != vol.volume_id


def test_delete_published_volume_is_failed_precondition(driver):
    vol = create(driver, "pvc-inuse")
    driver.client.controller.ControllerPublishVolume(_publish_request(vol.volume_id),
                                                     timeout=30)
    expect_error(driver.client.controller.DeleteVolume,
                 pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                 Code.FAILED_PRECONDITION, vol.volume_id, NODE_ID, "ControllerUnpublishVolume")
    # Nothing was lost: the volume is listed, still published, and its file is there.
    (entry,) = _list_all(driver)
    assert entry.volume == vol and list(entry.status.published_node_ids) == [NODE_ID]
    assert volume_files(driver) == {vol.volume_id + ".img"}
    driver.client.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE_ID),
        timeout=30)
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                                          timeout=30)
    assert volume_files(driver) == set()


def test_operation_pending_for_volume_is_aborted(driver):
    """Error Scheme: "Operation pending for volume" -> ABORTED. A second call while one
    holds the volume is refused at once (we hold the volume's lock as an in-flight
    call would)."""
    vol = create(driver, "pvc-busy")
    locks = driver.server.driver.locks
    with locks.hold(vol.volume_id, "NodeStageVolume"):
        expect_error(driver.client.controller.DeleteVolume,
                     pb.DeleteVolumeRequest(volume_id=vol.volume_id),
                     Code.ABORTED, vol.volume_id, "NodeStageVolume", "in progress")
        expect_error(driver.client.controller.ControllerPublishVolume,
                     _publish_request(vol.volume_id), Code.ABORTED, vol.volume_id)
    with locks.hold("name:pvc-busy2", "CreateVolume"):
        expect_error(driver.client.controller.CreateVolume, create_request("pvc-busy2"),
                     Code.ABORTED, "pvc-busy2", "in progress")
    assert _ids(driver) == [vol.volume_id]
    assert volume_files(driver) == {vol.volume_id + ".img"}


# --- ControllerPublishVolume -------------------------------------------------------------


def test_controller_publish_required_fields(driver):
    vol = create(driver, "pvc-pubreq")
    publish = driver.client.controller.ControllerPublishVolume
    expect_error(publish, _publish_request(""), Code.INVALID_ARGUMENT, "volume_id", "required")
    expect_error(publish, _publish_request(vol.volume_id, node_id=""),
                 Code.INVALID_ARGUMENT, vol.volume_id, "node_id", "required")
    request = _publish_request(vol.volume_id)
    request.ClearField("volume_capability")
    expect_error(publish, request, Code.INVALID_ARGUMENT, vol.volume_id, "volume_capability")
    request.volume_capability.mount.fs_type = "ext4"  # a capability without access_mode
    expect_error(publish, request, Code.INVALID_ARGUMENT, vol.volume_id, "access_mode")
    assert list(_list_all(driver)[0].status.published_node_ids) == []


@pytest.mark.parametrize("mode", MULTI_NODE_MODES)
def test_controller_publish_refuses_multi_node_modes(driver, mode):
    vol = create(driver, "pvc-pubmulti")
    expect_error(driver.client.controller.ControllerPublishVolume,
                 _publish_request(vol.volume_id,
                                  cap=mount_capability("ext4", mode=Mode.Value(mode))),
                 Code.INVALID_ARGUMENT, vol.volume_id, mode)
    assert list(_list_all(driver)[0].status.published_node_ids) == []


def test_controller_publish_unknown_volume_is_not_found(driver):
    missing = unknown_volume_id()
    expect_error(driver.client.controller.ControllerPublishVolume, _publish_request(missing),
                 Code.NOT_FOUND, missing, "does not exist")


def test_controller_publish_unknown_node_is_not_found(driver):
    vol = create(driver, "pvc-pubnode")
    expect_error(driver.client.controller.ControllerPublishVolume,
                 _publish_request(vol.volume_id, node_id="ghost-node"),
                 Code.NOT_FOUND, vol.volume_id, "ghost-node", "unknown")
    assert list(_list_all(driver)[0].status.published_node_ids) == []


def test_controller_publish_is_idempotent(driver):
    vol = create(driver, "pvc-pubidem")
    request = _publish_request(vol.volume_id, readonly=True)
    first = driver.client.controller.ControllerPublishVolume(request, timeout=30)
    second = driver.client.controller.ControllerPublishVolume(request, timeout=30)
    assert first == second
    assert first.publish_context  # handed to NodeStage
    assert list(_list_all(driver)[0].status.published_node_ids) == [NODE_ID]


@pytest.mark.parametrize("change, words", [
    ({"readonly": True}, ("readonly=False",)),
    ({"cap": mount_capability("ext4", mode=Mode.SINGLE_NODE_READER_ONLY)},
     ("SINGLE_NODE_WRITER",)),
    ({"cap": block_capability()}, ("mount access",)),
])
def test_controller_publish_same_node_incompatible_is_already_exists(driver, change, words):
    vol = create(driver, "pvc-pubclash", caps=[mount_capability("ext4"), block_capability()])
    original = _publish_request(vol.volume_id)
    context = driver.client.controller.ControllerPublishVolume(original, timeout=30)
    expect_error(driver.client.controller.ControllerPublishVolume,
                 _publish_request(vol.volume_id, **change),
                 Code.ALREADY_EXISTS, vol.volume_id, NODE_ID, "already published", *words)
    # The original attachment is intact and still answers idempotently.
    assert driver.client.controller.ControllerPublishVolume(original, timeout=30) == context
    assert list(_list_all(driver)[0].status.published_node_ids) == [NODE_ID]


class TestMaxVolumesPerNode:
    @pytest.fixture
    def driver_options(self):
        return {"max_volumes_per_node": 2}

    def test_node_get_info_reports_the_limit(self, driver):
        info = driver.client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
        assert info.max_volumes_per_node == 2

    def test_publish_beyond_the_limit_is_resource_exhausted(self, driver):
        vols = [create(driver, f"pvc-lim-{i}") for i in range(3)]
        publish = driver.client.controller.ControllerPublishVolume
        for vol in vols[:2]:
            publish(_publish_request(vol.volume_id), timeout=30)
        expect_error(publish, _publish_request(vols[2].volume_id),
                     Code.RESOURCE_EXHAUSTED, vols[2].volume_id, NODE_ID, "2", "maximum")
        # Re-publishing an attached volume is still idempotent at the limit.
        publish(_publish_request(vols[0].volume_id), timeout=30)
        published = {e.volume.volume_id: list(e.status.published_node_ids)
                     for e in _list_all(driver)}
        assert published == {vols[0].volume_id: [NODE_ID], vols[1].volume_id: [NODE_ID],
                             vols[2].volume_id: []}
        # Detaching one makes room.
        driver.client.controller.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vols[1].volume_id, node_id=NODE_ID),
            timeout=30)
        publish(_publish_request(vols[2].volume_id), timeout=30)


class TestMaximumVolumeSize:
    @pytest.fixture
    def driver_options(self):
        return {"max_volume_bytes": 512 * MiB}

    def test_create_beyond_the_maximum_is_out_of_range(self, driver):
        expect_error(driver.client.controller.CreateVolume,
                     create_request("pvc-max", size=513 * MiB),
                     Code.OUT_OF_RANGE, "pvc-max", str(513 * MiB), str(512 * MiB))
        assert volume_files(driver) == set()
        assert _capacity(driver).maximum_volume_size.value == 512 * MiB
        assert create(driver, "pvc-max", size=512 * MiB).capacity_bytes == 512 * MiB


# --- ControllerUnpublishVolume -----------------------------------------------------------


def test_controller_unpublish_requires_a_volume_id(driver):
    expect_error(driver.client.controller.ControllerUnpublishVolume,
                 pb.ControllerUnpublishVolumeRequest(node_id=NODE_ID),
                 Code.INVALID_ARGUMENT, "volume_id", "required")


@pytest.mark.parametrize("volume_id, node_id", [
    (unknown_volume_id(), NODE_ID),
    ("garbage", NODE_ID),
    (unknown_volume_id(), "ghost-node"),
    (unknown_volume_id(), ""),
])
def test_controller_unpublish_of_unknown_is_ok(driver, volume_id, node_id):
    """An unknown volume or node "can be safely regarded as ControllerUnpublished"."""
    driver.client.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id), timeout=30)


def test_controller_unpublish_is_idempotent(driver):
    vol = create(driver, "pvc-unpub")
    unpublish = pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE_ID)
    # Not published yet: OK.
    driver.client.controller.ControllerUnpublishVolume(unpublish, timeout=30)
    driver.client.controller.ControllerPublishVolume(_publish_request(vol.volume_id),
                                                     timeout=30)
    # Another node: not attached there, so OK, and ours stays.
    driver.client.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="ghost-node"),
        timeout=30)
    assert list(_list_all(driver)[0].status.published_node_ids) == [NODE_ID]
    for _ in range(2):
        driver.client.controller.ControllerUnpublishVolume(unpublish, timeout=30)
        assert list(_list_all(driver)[0].status.published_node_ids) == []


def test_controller_unpublish_without_node_detaches_everywhere(driver):
    vol = create(driver, "pvc-unpuball")
    driver.client.controller.ControllerPublishVolume(_publish_request(vol.volume_id),
                                                     timeout=30)
    driver.client.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id), timeout=30)
    assert list(_list_all(driver)[0].status.published_node_ids) == []


# --- ValidateVolumeCapabilities ------------------------------------------------------------


def _validate(driver, volume_id, caps, **kwargs) -> pb.ValidateVolumeCapabilitiesResponse:
    return driver.client.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(volume_id=volume_id, volume_capabilities=caps,
                                             **kwargs),
        timeout=30)


def test_validate_required_fields(driver):
    vol = create(driver, "pvc-val")
    validate = driver.client.controller.ValidateVolumeCapabilities
    expect_error(validate,
                 pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount_capability()]),
                 Code.INVALID_ARGUMENT, "volume_id", "required")
    expect_error(validate, pb.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id),
                 Code.INVALID_ARGUMENT, vol.volume_id, "volume_capabilities")
    no_mode = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume())
    expect_error(validate, pb.ValidateVolumeCapabilitiesRequest(
        volume_id=vol.volume_id, volume_capabilities=[no_mode]),
        Code.INVALID_ARGUMENT, vol.volume_id, "access_mode")


def test_validate_unknown_volume_is_not_found(driver):
    for volume_id in (unknown_volume_id(), "garbage"):
        expect_error(driver.client.controller.ValidateVolumeCapabilities,
                     pb.ValidateVolumeCapabilitiesRequest(
                         volume_id=volume_id, volume_capabilities=[mount_capability()]),
                     Code.NOT_FOUND, volume_id, "does not exist")


def test_validate_confirms_supported_capabilities(driver):
    vol = create(driver, "pvc-valok", params={"provisioning": "thin"})
    caps = [mount_capability(), mount_capability("ext4", flags=("noatime",)),
            block_capability(mode=Mode.SINGLE_NODE_MULTI_WRITER)]
    first = _validate(driver, vol.volume_id, caps, volume_context=vol.volume_context,
                      parameters={"provisioning": "thin"})
    assert first.HasField("confirmed")
    assert list(first.confirmed.volume_capabilities) == caps
    assert dict(first.confirmed.volume_context) == dict(vol.volume_context)
    assert first == _validate(driver, vol.volume_id, caps, volume_context=vol.volume_context,
                              parameters={"provisioning": "thin"})


@pytest.mark.parametrize("cap, extra, words", [
    (mount_capability("ext4", mode=Mode.MULTI_NODE_MULTI_WRITER), {},
     ("MULTI_NODE_MULTI_WRITER",)),
    (mount_capability("xfs"), {}, ("ext4", "xfs")),
    (mount_capability("ntfs"), {}, ("ntfs",)),
    (mount_capability("ext4", flags=("suid",)), {}, ("suid",)),
    (mount_capability(), {"parameters": {"provisioning": "thick"}}, ("parameters",)),
    (mount_capability(), {"mutable_parameters": {"iops": "10"}}, ("mutable_parameters",)),
])
def test_validate_does_not_confirm_unsupported(driver, cap, extra, words):
    """Unsupported capabilities are not an error: the response has no `confirmed` and a
    message saying why."""
    vol = create(driver, "pvc-valno", params={"provisioning": "thin"})
    rsp = _validate(driver, vol.volume_id, [mount_capability(), cap], **extra)
    assert not rsp.HasField("confirmed"), rsp
    for word in words:
        assert word in rsp.message, rsp.message


# --- ListVolumes -----------------------------------------------------------------------


def _page(driver, max_entries=0, token="") -> pb.ListVolumesResponse:
    return driver.client.controller.ListVolumes(
        pb.ListVolumesRequest(max_entries=max_entries, starting_token=token), timeout=30)


def _walk(driver, max_entries) -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(100):
        page = _page(driver, max_entries, token)
        assert len(page.entries) <= max_entries
        ids += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            return ids
    raise AssertionError("ListVolumes never ended")


def test_list_volumes_empty(driver):
    page = _page(driver)
    assert list(page.entries) == [] and page.next_token == ""


def test_list_volumes_negative_max_entries_is_invalid(driver):
    expect_error(driver.client.controller.ListVolumes, pb.ListVolumesRequest(max_entries=-1),
                 Code.INVALID_ARGUMENT, "max_entries", "negative")


def test_list_volumes_pages_in_a_stable_order(driver):
    created = [create(driver, f"pvc-list-{i}").volume_id for i in range(5)]
    everything = _page(driver)
    assert [e.volume.volume_id for e in everything.entries] == created
    assert everything.next_token == ""
    first = _page(driver, 2)
    assert len(first.entries) == 2 and first.next_token
    assert _page(driver, 2) == first  # the same page for the same request
    assert _walk(driver, 2) == created
    assert _walk(driver, 1) == created
    assert _walk(driver, 5) == created
    last = _page(driver, 2, _page(driver, 2, first.next_token).next_token)
    assert len(last.entries) == 1 and last.next_token == ""
    # Entries carry what CreateVolume returned.
    assert everything.entries[0].volume == create(driver, "pvc-list-0")


def test_list_volumes_survives_deleting_the_last_entry_of_a_page(driver):
    created = [create(driver, f"pvc-page-{i}").volume_id for i in range(5)]
    first = _page(driver, 2)
    assert [e.volume.volume_id for e in first.entries] == created[:2]
    driver.client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=created[1]),
                                          timeout=30)
    second = _page(driver, 2, first.next_token)
    assert [e.volume.volume_id for e in second.entries] == created[2:4]
    third = _page(driver, 2, second.next_token)
    assert [e.volume.volume_id for e in third.entries] == created[4:]
    assert third.next_token == ""
    # A token stays valid across a restart.
    driver.restart()
    assert _page(driver, 2, first.next_token) == second


@pytest.mark.parametrize("token", ["garbage", "-1", "1.5", " 1", "0x1", "١", "0", "01", "9" * 40])
def test_list_volumes_garbage_token_is_aborted(driver, token):
    create(driver, "pvc-tok")
    expect_error(driver.client.controller.ListVolumes,
                 pb.ListVolumesRequest(starting_token=token),
                 Code.ABORTED, repr(token), "from the start")


def test_list_volumes_future_token_is_aborted(driver):
    for i in range(3):
        create(driver, f"pvc-fut-{i}")
    token = _page(driver, 1).next_token
    future = str(int(token) + 1000)
    expect_error(driver.client.controller.ListVolumes,
                 pb.ListVolumesRequest(max_entries=1, starting_token=future),
                 Code.ABORTED, future, "not one this driver issued")


def test_list_volumes_reports_published_nodes(driver):
    a = create(driver, "pvc-pa")
    b = create(driver, "pvc-pb")
    driver.client.controller.ControllerPublishVolume(_publish_request(b.volume_id), timeout=30)
    status = {e.volume.volume_id: list(e.status.published_node_ids) for e in _list_all(driver)}
    assert status == {a.volume_id: [], b.volume_id: [NODE_ID]}
    driver.client.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=b.volume_id, node_id=NODE_ID), timeout=30)
    status = {e.volume.volume_id: list(e.status.published_node_ids) for e in _list_all(driver)}
    assert status == {a.volume_id: [], b.volume_id: []}


# --- GetCapacity ---------------------------------------------------------------------------


def test_get_capacity_thin_and_thick(driver):
    thin = _capacity(driver, {"provisioning": "thin"})
    thick = _capacity(driver, {"provisioning": "thick"})
    st = os.statvfs(driver.pool)
    free = st.f_bavail * st.f_frsize
    assert 0 < thick.available_capacity <= free
    assert thin.available_capacity > thick.available_capacity  # thin overcommits
    for report in (thin, thick):
        assert report.available_capacity % MiB == 0
        assert 0 < report.maximum_volume_size.value <= report.available_capacity
        assert report.minimum_volume_size.value == MiB
    # The default provisioning is thin.
    assert _capacity(driver) == thin
    # A thin volume is a promise: it takes its full size from what thin can still offer.
    create(driver, "pvc-cap", size=64 * MiB, params={"provisioning": "thin"})
    after = _capacity(driver, {"provisioning": "thin"})
    assert after.available_capacity == thin.available_capacity - 64 * MiB


def test_get_capacity_for_our_topology_and_another(driver):
    key = topology_key(driver)
    ours = _capacity(driver, topology={key: NODE_ID})
    assert ours.available_capacity > 0
    other = _capacity(driver, topology={key: "other-node"})
    assert other.available_capacity == 0
    assert other.maximum_volume_size.value == 0


def test_get_capacity_for_capabilities_we_cannot_serve_is_zero(driver):
    multi = _capacity(driver, caps=[mount_capability(mode=Mode.MULTI_NODE_MULTI_WRITER)])
    assert multi.available_capacity == 0
    assert _capacity(driver, params={"replicas": "3"}).available_capacity == 0
    assert _capacity(driver, caps=[block_capability()]).available_capacity > 0


def test_create_volume_as_external_provisioner_sends_a_prefixed_fstype(driver):
    """A StorageClass with csi.storage.k8s.io/fstype: xfs reaches CreateVolume as
    external-provisioner v6 sends it: the key stripped from the parameters, the value in
    the capability's fs_type, and the PVC's metadata under csi.storage.k8s.io/."""
    params = {"provisioning": "thin", "csi.storage.k8s.io/pvc/name": "data",
              "csi.storage.k8s.io/pvc/namespace": "default",
              "csi.storage.k8s.io/pv/name": "pvc-1"}
    vol = create(driver, "pvc-prefixed", size=300 * MiB, caps=[mount_capability("xfs")],
                 params=params)
    assert vol.volume_context["fsType"] == "xfs"
    # A CO that passes the key through is understood as well.
    vol = create(driver, "pvc-prefixed-raw", size=300 * MiB, caps=[mount_capability()],
                 params={"csi.storage.k8s.io/fstype": "xfs"})
    assert vol.volume_context["fsType"] == "xfs"
    expect_error(driver.client.controller.CreateVolume,
                 create_request("pvc-prefixed-bad", params={"csi.storage.k8s.io/fstype": "zfs"}),
                 Code.INVALID_ARGUMENT, "zfs")

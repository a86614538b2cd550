"""rpc/client.py's Calls, over stand-in stubs: the requests they build, the plain
values they return, paging, timeouts, and every gRPC error as one ClientError."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.rpc.client import Calls, ClientError, ListedVolume, VolumeInfo


class StubError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Recorder:
    """A stub method: records each (request, timeout) and answers from a list."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Any, Any]] = []

    def __call__(self, request: Any, timeout: Any = "unset") -> Any:
        # Copy: paging reuses one request object.
        copy = type(request)()
        copy.CopyFrom(request)
        self.calls.append((copy, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def calls(**stubs: Recorder) -> Calls:
    made = Calls()
    made.identity = SimpleNamespace(**stubs)
    made.controller = SimpleNamespace(**stubs)
    made.node = SimpleNamespace(**stubs)
    made.timeout = 7.0
    return made


def test_an_rpc_error_becomes_a_client_error_with_the_code_name():
    c = calls(DeleteVolume=Recorder(StubError(grpc.StatusCode.NOT_FOUND, "volume x is gone")))
    with pytest.raises(ClientError) as exc:
        c.delete_volume("x")
    assert (exc.value.code, exc.value.message) == ("NOT_FOUND", "volume x is gone")
    assert str(exc.value) == "volume x is gone (NOT_FOUND)"
    assert not isinstance(exc.value, grpc.RpcError)


def test_timeouts_default_to_the_clients_and_can_be_given():
    probe = Recorder(pb.ProbeResponse(), pb.ProbeResponse())
    probe.answers[0].ready.value = True
    c = calls(Probe=probe)
    assert c.probe() is True
    assert c.probe(timeout=None) is False
    assert [t for _, t in probe.calls] == [7.0, None]


def test_create_volume_builds_one_capability_and_the_source():
    answer = pb.CreateVolumeResponse(volume=pb.Volume(
        volume_id="vol-1", capacity_bytes=16 << 20, volume_context={"fsType": "ext4"},
        accessible_topology=[pb.Topology(segments={"node": "n1"})]))
    create = Recorder(answer, answer)
    c = calls(CreateVolume=create)
    vol = c.create_volume("a", 16 << 20, fs_type="xfs", parameters={"fsType": "xfs"})
    assert vol == VolumeInfo("vol-1", 16 << 20, {"fsType": "ext4"}, {"node": "n1"})
    c.create_volume("b", block=True, snapshot_id="snap-1")
    first, second = (request for request, _ in create.calls)
    assert first.capacity_range.required_bytes == 16 << 20
    assert first.volume_capabilities[0].mount.fs_type == "xfs"
    assert first.parameters == {"fsType": "xfs"}
    assert not first.HasField("volume_content_source")
    assert not second.HasField("capacity_range")  # size 0: the driver's choice
    assert second.volume_capabilities[0].HasField("block")
    assert second.volume_content_source.snapshot.snapshot_id == "snap-1"


def test_lists_follow_the_next_token():
    entry = pb.ListVolumesResponse.Entry
    pages = Recorder(
        pb.ListVolumesResponse(entries=[entry(volume=pb.Volume(volume_id="v1"))],
                               next_token="2"),
        pb.ListVolumesResponse(entries=[entry(
            volume=pb.Volume(volume_id="v2"),
            status=pb.ListVolumesResponse.VolumeStatus(published_node_ids=["n1"]))]),
    )
    c = calls(ListVolumes=pages)
    listed = list(c.list_volumes())
    assert [(e.volume.volume_id, e.published_node_ids) for e in listed] == [
        ("v1", ()), ("v2", ("n1",))]
    assert isinstance(listed[0], ListedVolume)
    assert [(r.starting_token, r.max_entries) for r, _ in pages.calls] == [("", 500), ("2", 500)]


def test_volume_stats_name_their_units():
    usage = pb.VolumeUsage
    stats = Recorder(pb.NodeGetVolumeStatsResponse(usage=[
        usage(unit=usage.BYTES, used=1, total=2), usage(unit=usage.INODES, used=3, total=4)]))
    c = calls(NodeGetVolumeStats=stats)
    assert [(u.unit, u.used, u.total) for u in c.volume_stats("v", "/t")] == [
        ("bytes", 1, 2), ("inodes", 3, 4)]

"""rpc/errors.py: the one place where domain errors become gRPC status codes and
messages. Each code of the table, the message formatted once (an error's own subject,
else the request's object), the cut to the trailer's size, and INTERNAL with a logged
trace for anything unexpected."""

from __future__ import annotations

import errno
import logging

import grpc
import pytest

from csi_py._proto import csi_pb2 as pb
from csi_py.domain import errors as e
from csi_py.rpc import errors as rpc_errors
from csi_py.rpc.errors import (
    CODES,
    MAX_MESSAGE,
    message_for,
    request_subject,
    rpc_method,
    status_for,
    with_subject,
)


class Aborted(Exception):
    """What a real ServicerContext.abort does: it raises."""


class Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


class Servicer:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    @rpc_method
    def DeleteVolume(self, request, context):  # noqa: N802
        if self.exc is not None:
            raise self.exc
        return pb.DeleteVolumeResponse()


def call(exc: BaseException | None, request=None) -> Context:
    context = Context()
    request = request or pb.DeleteVolumeRequest(volume_id="vol-1")
    try:
        Servicer(exc).DeleteVolume(request, context)
    except Aborted:
        pass
    return context


@pytest.mark.parametrize(("kind", "code"), CODES, ids=[k.__name__ for k, _ in CODES])
def test_every_domain_error_has_its_code(kind, code):
    assert status_for(kind("x")) == code
    assert call(kind("x")).code == code


def test_the_table_covers_every_domain_error():
    kinds = {cls for cls in vars(e).values()
             if isinstance(cls, type) and issubclass(cls, e.DriverError)} - {e.DriverError}
    assert kinds == {kind for kind, _ in CODES}


def test_a_success_passes_through():
    assert Servicer(None).DeleteVolume(pb.DeleteVolumeRequest(volume_id="v"), Context()) == \
        pb.DeleteVolumeResponse()


def test_an_error_about_the_requests_object_is_shown_as_it_is():
    exc = e.FailedPrecondition("still published to node(s) n1", subject=e.volume("vol-1"))
    assert call(exc).details == "volume vol-1: still published to node(s) n1"
    created = e.AlreadyExists("exists but it is thick", subject=e.volume("vol-9", "pvc"))
    assert message_for(created, pb.CreateVolumeRequest(name="pvc")) == \
        "volume vol-9 'pvc': exists but it is thick"


def test_an_error_about_another_object_follows_the_requests_object():
    full = e.ResourceExhausted("already has 2 volumes published",
                               subject=e.Subject("node", id="n1"))
    assert call(full).details == "volume vol-1: node n1: already has 2 volumes published"
    missing = e.NotFound("does not exist", subject=e.volume("vol-0"))
    group = pb.CreateVolumeGroupSnapshotRequest(name="g", source_volume_ids=["vol-0"])
    assert message_for(missing, group) == "group snapshot 'g': volume vol-0: does not exist"


def test_an_error_without_a_subject_gets_the_requests_object():
    assert call(e.NotFound("no such thing")).details == "volume vol-1: no such thing"
    create = pb.CreateVolumeRequest(name="pvc 1")
    assert message_for(e.InvalidArgument("bad"), create) == "volume 'pvc 1': bad"
    # Always, whatever the text holds: the message is never searched for the object (a
    # name "e" is in "parameters", and a guess would have left the object out).
    short = pb.CreateVolumeRequest(name="e")
    assert with_subject(short, "parameters is 6090 bytes in total") == \
        "volume 'e': parameters is 6090 bytes in total"


def test_errors_that_name_a_snapshot_carry_it_as_their_subject():
    from csi_py.config import Config
    from csi_py.core.rules import check_snapshot_parameters
    from csi_py.core.topology import snapshot_owner_elsewhere
    from csi_py.domain.snapshot_ids import new_snapshot_id

    with pytest.raises(e.InvalidArgument) as unknown:
        check_snapshot_parameters({"compress": "yes"}, e.snapshot(name="snap-1"))
    assert unknown.value.subject == e.snapshot(name="snap-1")
    assert message_for(unknown.value, pb.CreateSnapshotRequest(name="snap-1")) == \
        "snapshot 'snap-1': unknown parameter(s) ['compress']; snapshots take none"
    with pytest.raises(e.InvalidArgument) as group:
        check_snapshot_parameters({"x": "1"}, e.group_snapshot(name="g"))
    assert str(group.value).startswith("group snapshot 'g': unknown parameter(s) ['x']")
    here = Config(endpoint="unix:///nonexistent.sock", node_id="node-b", pool="/nonexistent")
    words = snapshot_owner_elsewhere(new_snapshot_id("node-a"), here)
    assert words is not None and words.startswith("lives on node 'node-a', not on node 'node-b'")


def test_a_lock_key_never_reaches_a_message():
    from csi_py.core.locks import KeyedTryLock

    locks = KeyedTryLock()
    with locks.hold("name:pvc-1", "CreateVolume"):
        with pytest.raises(e.Aborted) as busy:
            with locks.hold("name:pvc-1", "CreateVolume", e.volume(name="pvc-1")):
                pass
    message = message_for(busy.value, pb.CreateVolumeRequest(name="pvc-1"))
    assert message == ("volume 'pvc-1': an operation (CreateVolume) is already in"
                       " progress; retry later")
    assert "name:" not in message


@pytest.mark.parametrize(("request_", "subject"), [
    (pb.DeleteVolumeRequest(volume_id="vol-1"), e.Subject("volume", id="vol-1")),
    (pb.CreateVolumeRequest(name="pvc"), e.Subject("volume", name="pvc")),
    (pb.CreateSnapshotRequest(name="s", source_volume_id="vol-1"),
     e.Subject("snapshot", name="s")),
    (pb.CreateSnapshotRequest(source_volume_id="vol-1"), e.Subject("volume", id="vol-1")),
    (pb.DeleteSnapshotRequest(snapshot_id="snap-1"), e.Subject("snapshot", id="snap-1")),
    (pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="group-1"),
     e.Subject("group snapshot", id="group-1")),
    (pb.ListVolumesRequest(), None),
    (pb.DeleteVolumeRequest(), None),
])
def test_the_requests_object(request_, subject):
    assert request_subject(request_) == subject


def test_subjects_show_untrusted_values_safely():
    assert str(e.volume("vol-1")) == "volume vol-1"
    assert str(e.volume("../x y")) == "volume '../x y'"
    assert str(e.volume("vol-1", "pvc")) == "volume vol-1 'pvc'"
    long = str(e.volume("a" * 5000))
    assert len(long) < 100 and "(5000 chars)" in long
    assert str(e.Internal("mkfs failed", subject=e.Subject("device", path="/dev/loop3"),
                          cause="exit status 1")) == "device /dev/loop3: mkfs failed: exit status 1"


def test_a_message_is_cut_to_fit_the_trailer():
    details = call(e.InvalidArgument("x" * 100_000)).details
    assert len(details) == MAX_MESSAGE and details.endswith("...")


def test_kernel_errors_are_translated_with_their_path_and_meaning():
    exc = OSError(errno.ENOSPC, "No space left on device", "/pool/volumes/vol-1.img")
    context = call(exc)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "/pool/volumes/vol-1.img" in context.details
    assert "no space left in the pool" in context.details


@pytest.mark.parametrize(("exc", "code", "details"), [
    # Unexpected: INTERNAL, naming the call and the exception's type.
    (KeyError("surprise"), grpc.StatusCode.INTERNAL,
     "volume vol-1: DeleteVolume: KeyError: 'surprise'"),
    # A bare ValueError is input that reached a parser, most likely (or a bug).
    (ValueError("bad size"), grpc.StatusCode.INVALID_ARGUMENT, "volume vol-1: bad size"),
])
def test_a_non_domain_exception_keeps_its_trace_in_the_log(caplog, exc, code, details):
    with caplog.at_level(logging.WARNING, logger=rpc_errors.__name__):
        context = call(exc)
    assert (context.code, context.details) == (code, details)
    assert status_for(exc) == code
    assert any(r.exc_info for r in caplog.records)


def test_node_side_errors_name_their_volume_and_target_once(tmp_path):
    from csi_py.linux import targets

    stats = pb.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path="/t")
    gone = e.NotFound("is not mounted at /t", subject=e.volume("vol-1"))
    assert message_for(gone, stats) == "volume vol-1: is not mounted at /t"
    afile = tmp_path / "f"
    afile.write_text("data")
    with pytest.raises(e.AlreadyExists) as taken:
        targets.make_dir(str(afile))
    publish = pb.NodePublishVolumeRequest(volume_id="vol-1", target_path=str(afile))
    assert message_for(taken.value, publish) == \
        f"volume vol-1: target {afile}: exists and is not a directory"


NODE_SIDE = ("core/node.py", "core/node_base.py", "core/node_stage.py", "core/node_publish.py",
             "core/node_expand.py", "core/node_rules.py", "core/ephemeral.py",
             "linux/targets.py", "core/mutable.py", "core/topology.py")


def test_every_node_side_error_carries_its_subject():
    """The node side's domain errors say what they are about in a Subject, so rpc
    formats their message once (no guessing from the text)."""
    import ast
    import pathlib

    import csi_py

    root = pathlib.Path(csi_py.__file__).parent
    raised, bare = 0, []
    for name in NODE_SIDE:
        for node in ast.walk(ast.parse((root / name).read_text())):
            if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and getattr(node.exc.func, "id", "") in e.__dict__
                    and isinstance(e.__dict__[node.exc.func.id], type)
                    and issubclass(e.__dict__[node.exc.func.id], e.DriverError)):
                raised += 1
                if not any(k.arg == "subject" for k in node.exc.keywords):
                    bare.append(f"{name}:{node.lineno}")
    assert raised > 30  # the walk sees the raises
    assert bare == []

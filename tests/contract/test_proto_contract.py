"""proto/csi.proto and its generated code against the official CSI v1.13.0 definition.

Names, numbers, types, labels, oneofs, options (including the csi.v1 custom options) and
services must be identical; comments and the file name are not compared.

The official csi.proto comes from $CSI_SPEC_DIR (a directory holding it) or from the Go
module cache via ``go mod download``. Without either the comparison tests are skipped,
except under CI=true, where that is a failure.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

REPO = Path(__file__).resolve().parents[2]
OUR_PROTO = REPO / "proto" / "csi.proto"
GEN_PROTO = REPO / "hack" / "gen-proto"
SPEC_MODULE = "github.com/container-storage-interface/spec"
SPEC_VERSION = "v1.13.0"
GO_DOWNLOAD_TIMEOUT = 300

SERVICES = ("Identity", "Controller", "GroupController", "SnapshotMetadata", "Node")

# Repeated descriptor fields whose elements are identified by name, and what to call them.
KEYED = {
    "message_type": "message",
    "nested_type": "message",
    "enum_type": "enum",
    "field": "field",
    "extension": "extension",
    "value": "enum value",
    "oneof_decl": "oneof",
    "service": "service",
    "method": "method",
}
# Not part of the contract: where the file lives and its comments.
IGNORED_FILE_FIELDS = {"name", "source_code_info"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _unavailable(reason: str) -> None:
    reason += f" (set CSI_SPEC_DIR to a directory holding the {SPEC_VERSION} csi.proto)"
    if _in_ci():
        pytest.fail(f"CI=true and the official csi.proto is unavailable: {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------------------
# Locating and compiling protos
# ---------------------------------------------------------------------------


def _spec_dir_from_go(tmp_dir: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        _unavailable("go is not on PATH, cannot fetch the official csi.proto")
    cmd = [go, "mod", "download", "-json", f"{SPEC_MODULE}@{SPEC_VERSION}"]
    try:
        proc = subprocess.run(
            cmd, cwd=tmp_dir, capture_output=True, text=True, timeout=GO_DOWNLOAD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"`{' '.join(cmd[1:])}` timed out after {GO_DOWNLOAD_TIMEOUT}s")
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        _unavailable(f"`go mod download {SPEC_MODULE}@{SPEC_VERSION}` failed: {detail}")
    return Path(info["Dir"])


@pytest.fixture(scope="session")
def official_proto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("CSI_SPEC_DIR")
    if env:
        spec_dir = Path(env)
        if not (spec_dir / "csi.proto").is_file():
            pytest.fail(f"CSI_SPEC_DIR={env} has no csi.proto")
    else:
        spec_dir = _spec_dir_from_go(tmp_path_factory.mktemp("go"))
        if not (spec_dir / "csi.proto").is_file():
            pytest.fail(f"go mod download returned {spec_dir}, which has no csi.proto")
    return spec_dir / "csi.proto"


def _compile(proto: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    """Compile one .proto with grpc_tools' protoc; return its FileDescriptorProto."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to compile csi.proto")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto.parent}",
        f"-I{well_known}",
        f"--descriptor_set_out={out}",
        proto.name,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"protoc failed on {proto}:\n{proc.stdout}{proc.stderr}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1, [f.name for f in fds.file]
    return fds.file[0]


@pytest.fixture(scope="session")
def official(official_proto: Path, tmp_path_factory: pytest.TempPathFactory):
    return _compile(official_proto, tmp_path_factory.mktemp("official") / "csi.pb")


@pytest.fixture(scope="session")
def ours_from_source(tmp_path_factory: pytest.TempPathFactory):
    return _compile(OUR_PROTO, tmp_path_factory.mktemp("ours") / "csi.pb")


@pytest.fixture(scope="session")
def ours_generated() -> descriptor_pb2.FileDescriptorProto:
    from csi_py._proto import csi_pb2

    fdp = descriptor_pb2.FileDescriptorProto()
    csi_pb2.DESCRIPTOR.CopyToProto(fdp)
    return fdp


# ---------------------------------------------------------------------------
# Comparing descriptors
# ---------------------------------------------------------------------------


def _wire_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Decode raw protobuf wire format into (field number, value) pairs."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result, pos

    pos = 0
    while pos < len(data):
        tag, pos = varint(pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = varint(pos)
            yield number, value
        elif wire_type == 1:
            yield number, data[pos : pos + 8]
            pos += 8
        elif wire_type == 2:
            size, pos = varint(pos)
            yield number, data[pos : pos + size]
            pos += size
        elif wire_type == 5:
            yield number, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type} in options")


def _options(opts: Message, extension_names: dict[tuple[str, int], str]) -> dict[str, list]:
    """Options as {name: [values]}, custom extensions named "(csi.v1.x)".

    Decoded from the wire so that it does not matter whether the csi.v1 extensions are
    registered with the protobuf runtime that parsed the descriptor.
    """
    kind = opts.DESCRIPTOR.full_name
    result: dict[str, list] = {}
    for number, value in _wire_fields(opts.SerializeToString(deterministic=True)):
        known = opts.DESCRIPTOR.fields_by_number.get(number)
        if known is not None:
            name = known.name
        else:
            name = extension_names.get((kind, number), f"[unknown extension {number}]")
        result.setdefault(name, []).append(value)
    return result


def _is_repeated(fd) -> bool:
    # FieldDescriptor.label is gone in protobuf 7; is_repeated is missing in older runtimes.
    is_repeated = getattr(fd, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else fd.label == fd.LABEL_REPEATED


def _json_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    """json_name as protoc would default it (generated code omits it)."""
    if field.HasField("json_name"):
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class _Differ:
    def __init__(self, official: descriptor_pb2.FileDescriptorProto) -> None:
        # Map (options message, number) -> "(csi.v1.name)", from the official file.
        self.extension_names = {
            (ext.extendee.lstrip("."), ext.number): f"({official.package}.{ext.name})"
            for ext in official.extension
        }
        self.problems: list[str] = []

    def report(self, where: str, what: str, expected: object, actual: object) -> None:
        self.problems.append(f"{where}: {what}: official {expected!r}, ours {actual!r}")

    def compare(self, where: str, scope: str, exp: Message, act: Message) -> None:
        is_file = isinstance(exp, descriptor_pb2.FileDescriptorProto)
        for fd in exp.DESCRIPTOR.fields:
            name = fd.name
            if is_file and name in IGNORED_FILE_FIELDS:
                continue
            if name == "options":
                eo = _options(exp.options, self.extension_names)
                ao = _options(act.options, self.extension_names)
                if eo != ao:
                    self.report(where, "options", eo, ao)
                continue
            if name == "json_name":
                if _json_name(exp) != _json_name(act):
                    self.report(where, name, _json_name(exp), _json_name(act))
                continue
            ev, av = getattr(exp, name), getattr(act, name)
            if _is_repeated(fd):
                if name in KEYED:
                    self._compare_keyed(where, scope, KEYED[name], ev, av)
                elif fd.message_type is not None:
                    if len(ev) != len(av):
                        self.report(where, f"number of {name}", len(ev), len(av))
                    for i, (e, a) in enumerate(zip(ev, av, strict=False)):
                        self.compare(f"{where} {name}[{i}]", scope, e, a)
                elif list(ev) != list(av):
                    self.report(where, name, list(ev), list(av))
            elif fd.message_type is not None:
                if exp.HasField(name) != act.HasField(name):
                    self.report(where, f"{name} present", exp.HasField(name), act.HasField(name))
                else:
                    self.compare(f"{where} {name}", scope, ev, av)
            else:
                e = (exp.HasField(name), ev)
                a = (act.HasField(name), av)
                if e != a:
                    self.report(where, name, ev if e[0] else None, av if a[0] else None)

    def _compare_keyed(self, where: str, scope: str, kind: str, exp_list, act_list) -> None:
        exp_by = {e.name: e for e in exp_list}
        act_by = {a.name: a for a in act_list}
        for missing in exp_by.keys() - act_by.keys():
            self.problems.append(f"{where}: {kind} {missing!r} is missing in ours")
        for extra in act_by.keys() - exp_by.keys():
            self.problems.append(f"{where}: {kind} {extra!r} is not in the official file")
        exp_order = [e.name for e in exp_list if e.name in act_by]
        act_order = [a.name for a in act_list if a.name in exp_by]
        if exp_order != act_order:
            self.report(where, f"{kind} order", exp_order, act_order)
        for name in exp_order:
            full = f"{scope}.{name}" if scope else name
            child_scope = full if kind in ("message", "enum", "service") else scope
            self.compare(f"{kind} {full}", child_scope, exp_by[name], act_by[name])


def contract_differences(
    official: descriptor_pb2.FileDescriptorProto, ours: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    differ = _Differ(official)
    differ.compare(f"file (package {official.package})", official.package, official, ours)
    return sorted(differ.problems)


def _assert_same_contract(official, ours, what: str) -> None:
    problems = contract_differences(official, ours)
    assert not problems, (
        f"{what} differs from the official CSI {SPEC_VERSION} csi.proto "
        f"({len(problems)} difference(s)):\n  " + "\n  ".join(problems)
    )


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_proto_source_matches_official(official, ours_from_source):
    _assert_same_contract(official, ours_from_source, "proto/csi.proto")


def test_generated_module_matches_official(official, ours_generated):
    _assert_same_contract(official, ours_generated, "csi_py._proto.csi_pb2.DESCRIPTOR")


def test_official_contract_sanity(official):
    # Guards against comparing with the wrong file (e.g. another spec version).
    assert official.package == "csi.v1"
    assert [s.name for s in official.service] == list(SERVICES)
    assert {e.name: e.number for e in official.extension}["csi_secret"] == 1059


def test_comparator_reports_changes(ours_from_source):
    """The comparison itself must notice a changed number, option, type or oneof."""
    assert contract_differences(ours_from_source, ours_from_source) == []

    def first(items, name):
        return next(i for i in items if i.name == name)

    mutated = descriptor_pb2.FileDescriptorProto()
    mutated.CopyFrom(ours_from_source)
    create = first(mutated.message_type, "CreateVolumeRequest")
    first(create.field, "capacity_range").number = 12
    first(create.field, "secrets").ClearField("options")  # drops (csi_secret) = true
    volume = first(mutated.message_type, "Volume")
    first(volume.field, "capacity_bytes").type = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
    cap = first(mutated.message_type, "VolumeCapability")
    first(cap.field, "access_mode").oneof_index = 0
    mode = first(first(cap.nested_type, "AccessMode").enum_type, "Mode")
    first(mode.value, "MULTI_NODE_MULTI_WRITER").number = 9
    first(mutated.service, "Node").method.pop()

    problems = "\n".join(contract_differences(ours_from_source, mutated))
    expected = [
        "field csi.v1.CreateVolumeRequest.capacity_range: number: official 2, ours 12",
        "field csi.v1.CreateVolumeRequest.secrets: options",
        "(csi.v1.csi_secret)",
        "field csi.v1.Volume.capacity_bytes: type",
        "field csi.v1.VolumeCapability.access_mode: oneof_index: official None, ours 0",
        "enum value csi.v1.VolumeCapability.AccessMode.Mode.MULTI_NODE_MULTI_WRITER: number",
        "service csi.v1.Node: method 'NodeGetInfo' is missing in ours",
    ]
    for needle in expected:
        assert needle in problems, f"{needle!r} not reported in:\n{problems}"


def test_generated_code_is_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate")
    for plugin in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        beside_python = (Path(sys.executable).parent / plugin).is_file()
        if not beside_python and shutil.which(plugin) is None:
            if _in_ci():
                pytest.fail(f"{plugin} (mypy-protobuf) is not installed")
            pytest.skip(f"{plugin} (mypy-protobuf) is not installed")
    proc = subprocess.run(
        [sys.executable, str(GEN_PROTO), "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, (
        f"hack/gen-proto --check failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )


def test_generated_modules_use_package_imports():
    from csi_py._proto import csi_pb2, csi_pb2_grpc

    assert csi_pb2_grpc.csi__py_dot___proto_dot_csi__pb2 is csi_pb2
    assert "csi_pb2" not in sys.modules, "something imported a flat top-level csi_pb2"
    source = Path(csi_pb2_grpc.__file__).read_text()
    assert "from csi_py._proto import csi_pb2" in source
    assert "\nimport csi_pb2" not in source


def test_grpc_stubs_expose_every_service_and_method():
    import grpc

    from csi_py._proto import csi_pb2, csi_pb2_grpc

    assert list(csi_pb2.DESCRIPTOR.services_by_name) == list(SERVICES)
    kinds = {
        (False, False): grpc.UnaryUnaryMultiCallable,
        (False, True): grpc.UnaryStreamMultiCallable,
        (True, False): grpc.StreamUnaryMultiCallable,
        (True, True): grpc.StreamStreamMultiCallable,
    }
    channel = grpc.insecure_channel("unix:///nonexistent/csi-contract-test.sock")
    try:
        for service in csi_pb2.DESCRIPTOR.services_by_name.values():
            proto = descriptor_pb2.ServiceDescriptorProto()
            service.CopyToProto(proto)
            servicer = getattr(csi_pb2_grpc, f"{service.name}Servicer")
            stub = getattr(csi_pb2_grpc, f"{service.name}Stub")(channel)
            assert callable(getattr(csi_pb2_grpc, f"add_{service.name}Servicer_to_server"))
            assert [m.name for m in proto.method] == [m.name for m in service.methods]
            for method in proto.method:
                assert callable(getattr(servicer, method.name)), (service.name, method.name)
                kind = kinds[(method.client_streaming, method.server_streaming)]
                assert isinstance(getattr(stub, method.name), kind), (service.name, method.name)
    finally:
        channel.close()


def test_identity_round_trip_over_unix_socket(tmp_path):
    """The generated servicer/stub pair works end to end on a real gRPC server."""
    from concurrent import futures

    import grpc

    from csi_py._proto import csi_pb2, csi_pb2_grpc

    class Identity(csi_pb2_grpc.IdentityServicer):
        def GetPluginInfo(self, request, context):
            return csi_pb2.GetPluginInfoResponse(name="contract.test", vendor_version="0")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(), server)
    address = f"unix://{tmp_path / 'csi.sock'}"
    server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)
            info = stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
            assert (info.name, info.vendor_version) == ("contract.test", "0")
            with pytest.raises(grpc.RpcError) as err:
                stub.Probe(csi_pb2.ProbeRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)

#!/usr/bin/env python3
"""Test-only stand-in for node-driver-registrar, for the local cluster of hack/cluster, where
no registry serves the real image. It speaks kubelet's plugin registration API
(pluginregistration.k8s.io/v1) the way the real sidecar does:

1. asks the driver for its name (CSI GetPluginInfo on --csi-address, retrying until it
   answers);
2. serves `pluginregistration.Registration` (GetInfo, NotifyRegistrationStatus) on
   /registration/<driver>-reg.sock, where kubelet's plugin watcher finds it;
3. answers GetInfo with type CSIPlugin, the driver's name, --kubelet-registration-path and
   version 1.0.0; records kubelet's NotifyRegistrationStatus in <csi dir>/registration-status.

With `--http-endpoint=[host]:port` it also serves /healthz there (127.0.0.1 when no host is
given), as the real sidecar does for the DaemonSet's httpGet liveness probe: 200 only while
the registration socket exists and kubelet's last word was "registered", so that a lost
registration restarts the container. `--mode=kubelet-registration-probe` answers the same
question with an exit status (the real v2.17.0 treats that mode as a no-op).

Not a product: the manifests keep naming the real image; tests/e2e's kustomize overlays swap
this one in (CSI_PY_E2E_REAL_SIDECARS=1 keeps the real one). Runs from the csi-py image.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "pluginregistration.Registration"
STATUS_FILE = "registration-status"


def _message_classes() -> dict[str, Any]:
    """The four messages of kubelet's pluginregistration/v1 api.proto, built at run time
    from a descriptor (field numbers as in that proto), so nothing is generated."""
    t = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="csi_py_standin/pluginregistration.proto", package="pluginregistration",
        syntax="proto3")
    layout: dict[str, list[tuple[str, int, int]]] = {
        "InfoRequest": [],
        "PluginInfo": [("type", t.TYPE_STRING, t.LABEL_OPTIONAL),
                       ("name", t.TYPE_STRING, t.LABEL_OPTIONAL),
                       ("endpoint", t.TYPE_STRING, t.LABEL_OPTIONAL),
                       ("supported_versions", t.TYPE_STRING, t.LABEL_REPEATED)],
        "RegistrationStatus": [("plugin_registered", t.TYPE_BOOL, t.LABEL_OPTIONAL),
                               ("error", t.TYPE_STRING, t.LABEL_OPTIONAL)],
        "RegistrationStatusResponse": [],
    }
    for name, fields in layout.items():
        message = proto.message_type.add(name=name)
        for number, (field, kind, label) in enumerate(fields, start=1):
            message.field.add(name=field, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    classes = {}
    for name in layout:
        descriptor = pool.FindMessageTypeByName(f"pluginregistration.{name}")
        if hasattr(message_factory, "GetMessageClass"):
            classes[name] = message_factory.GetMessageClass(descriptor)
        else:  # protobuf < 4.22
            classes[name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return classes


def driver_name(csi_address: str, timeout: float = 600.0) -> str:
    """The driver's name from GetPluginInfo, retried until the driver answers.
    Raises TimeoutError after `timeout` seconds."""
    from csi_py._proto import csi_pb2 as pb
    from csi_py.rpc.client import Client

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with Client(csi_address) as client:
                return client.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=5).name
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(1)
    raise TimeoutError(f"no answer from the driver at {csi_address}: {last}")


def registration_socket(registration_dir: Path, name: str) -> Path:
    return registration_dir / f"{name}-reg.sock"


def serve(args: argparse.Namespace) -> int:
    messages = _message_classes()
    status_file = Path(args.csi_address).parent / STATUS_FILE
    status_file.unlink(missing_ok=True)
    name = driver_name(args.csi_address)
    socket_path = registration_socket(Path(args.registration_dir), name)
    socket_path.unlink(missing_ok=True)

    def get_info(request: Any, context: Any) -> Any:
        return messages["PluginInfo"](type="CSIPlugin", name=name,
                                      endpoint=args.kubelet_registration_path,
                                      supported_versions=["1.0.0"])

    def notify(request: Any, context: Any) -> Any:
        if request.plugin_registered:
            print(f"kubelet registered {name}", flush=True)
            status_file.write_text("registered\n")
        else:
            print(f"kubelet did not register {name}: {request.error}", flush=True)
            status_file.write_text(f"error: {request.error}\n")
        return messages["RegistrationStatusResponse"]()

    def handler(function: Any, request: str, response: str) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            function, request_deserializer=messages[request].FromString,
            response_serializer=messages[response].SerializeToString)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "GetInfo": handler(get_info, "InfoRequest", "PluginInfo"),
        "NotifyRegistrationStatus": handler(notify, "RegistrationStatus",
                                            "RegistrationStatusResponse"),
    })])
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    print(f"serving pluginregistration for {name} on {socket_path}", flush=True)
    healthz = serve_healthz(args) if args.http_endpoint else None
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2).wait()
    if healthz is not None:
        healthz.shutdown()
    socket_path.unlink(missing_ok=True)
    status_file.unlink(missing_ok=True)
    return 0


def registered(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether kubelet has the plugin registered, and why not."""
    status_file = Path(args.csi_address).parent / STATUS_FILE
    sockets = list(Path(args.registration_dir).glob("*-reg.sock"))
    if not sockets:
        return False, f"no registration socket in {args.registration_dir}"
    try:
        status = status_file.read_text().strip()
    except FileNotFoundError:
        status = "kubelet has not answered yet"
    if status != "registered":
        return False, f"not registered with kubelet: {status}"
    return True, "ok"


def probe(args: argparse.Namespace) -> int:
    """Exit 0 while kubelet has the plugin registered, 1 (saying why) otherwise."""
    ok, why = registered(args)
    if not ok:
        print(why, file=sys.stderr)
    return 0 if ok else 1


def serve_healthz(args: argparse.Namespace) -> ThreadingHTTPServer:
    """/healthz on --http-endpoint, in a background thread."""
    host, _, port = args.http_endpoint.rpartition(":")
    address = (host or "127.0.0.1", int(port))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/healthz":
                self.send_error(404)
                return
            ok, why = registered(args)
            body = (why + "\n").encode()
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if not ok:
                print(f"healthz: {why}", file=sys.stderr, flush=True)

        def log_message(self, format: str, *items: object) -> None:  # noqa: A002
            pass  # kubelet probes every few seconds; log only failures

    server = ThreadingHTTPServer(address, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving /healthz on {address[0]}:{address[1]}", flush=True)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csi-address", default="/csi/csi.sock")
    parser.add_argument("--kubelet-registration-path", required=True)
    parser.add_argument("--registration-dir", default="/registration")
    parser.add_argument("--mode", default="registration",
                        choices=["registration", "kubelet-registration-probe"])
    parser.add_argument("--v", default="0", help="accepted for compatibility; ignored")
    parser.add_argument("--http-endpoint", default="",
                        help="[host]:port to serve /healthz on (host 127.0.0.1 if empty)")
    parser.add_argument("--health-port", default="", help="accepted; ignored")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring flags of the real sidecar: {' '.join(unknown)}", file=sys.stderr)
    if args.mode == "kubelet-registration-probe":
        return probe(args)
    os.umask(0o077)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())

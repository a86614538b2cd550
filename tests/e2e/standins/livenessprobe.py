#!/usr/bin/env python3
"""Test-only stand-in for the livenessprobe sidecar, for the local cluster of hack/cluster,
where no registry serves the real image: an HTTP server whose GET /healthz calls the driver's
CSI Probe and answers 200 when it is ready, 500 (with the reason) when it is not or does not
answer within --probe-timeout.

It listens on --http-endpoint (host:port) or, with only --health-port, on 127.0.0.1:<port>
(the local cluster's pods use hostNetwork, and the node's address is 127.0.0.1).

Not a product: the manifests keep naming the real image; tests/e2e's kustomize overlays swap
this one in (CSI_PY_E2E_REAL_SIDECARS=1 keeps the real one). Runs from the csi-py image.
"""

from __future__ import annotations

import argparse
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc


def seconds(duration: str) -> float:
    """A Go-style duration ("3s", "500ms", "1m") in seconds. Raises ValueError."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", duration.strip())
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def probe(csi_address: str, timeout: float) -> tuple[bool, str]:
    """(ready, why) from the driver's Probe; never raises for an RPC failure."""
    from csi_py._proto import csi_pb2 as pb
    from csi_py.rpc.client import Client

    try:
        with Client(csi_address) as client:
            reply = client.identity.Probe(pb.ProbeRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return False, f"Probe failed: {exc.code().name}: {exc.details()}"
    if reply.HasField("ready") and not reply.ready.value:
        return False, "the driver says it is not ready"
    return True, "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csi-address", default="/run/csi/socket")
    parser.add_argument("--health-port", type=int, default=9808)
    parser.add_argument("--http-endpoint", default="")
    parser.add_argument("--probe-timeout", default="1s")
    parser.add_argument("--v", default="0", help="accepted for compatibility; ignored")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring flags of the real sidecar: {' '.join(unknown)}", file=sys.stderr)
    timeout = seconds(args.probe_timeout)
    if args.http_endpoint:
        host, _, port = args.http_endpoint.rpartition(":")
        address = (host or "127.0.0.1", int(port))
    else:
        address = ("127.0.0.1", args.health_port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/healthz":
                self.send_error(404)
                return
            ready, why = probe(args.csi_address, timeout)
            body = (why + "\n").encode()
            self.send_response(200 if ready else 500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if not ready:
                print(f"healthz: {why}", file=sys.stderr, flush=True)

        def log_message(self, format: str, *items: object) -> None:  # noqa: A002
            pass  # kubelet probes every few seconds; log only failures

    server = ThreadingHTTPServer(address, Handler)
    print(f"serving /healthz on {address[0]}:{address[1]} for {args.csi_address}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

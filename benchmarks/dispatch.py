#!/usr/bin/env python3
"""What csi-py's gRPC dispatch costs over the transport: NodeGetCapabilities answered by a
null server, by csi-py's NodeService without its interceptor, and by csi-py as it serves
(interceptor included), each in its own process, in interleaved rounds from one client.

  benchmarks/dispatch.py [--rounds 10] [--calls 300] [--base DIR]

--base DIR adds csi-py from another source tree (e.g. a `git archive` of an older
commit) as a fourth server. Prints p50 and p90 per call; writes nothing. No root needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(sock: str, mode: str, pool: str) -> None:
    import grpc

    from csi_py._proto import csi_pb2 as pb
    from csi_py._proto import csi_pb2_grpc

    if mode == "null":
        class Null(csi_pb2_grpc.NodeServicer):
            def NodeGetCapabilities(self, request, context):  # noqa: N802
                return pb.NodeGetCapabilitiesResponse()

        server = grpc.server(futures.ThreadPoolExecutor(16))
        csi_pb2_grpc.add_NodeServicer_to_server(Null(), server)  # type: ignore[abstract]
    else:
        from csi_py import logs
        from csi_py import server as csi_server
        from csi_py.config import Config
        from csi_py.core.driver import Driver
        from csi_py.linux import real_host
        from csi_py.rpc.node import NodeService

        logs.setup("INFO")
        driver = Driver(Config(endpoint="unix://" + sock, node_id="n", pool=pool,
                               reserve_bytes=0), real_host())
        driver.start()
        observers = [csi_server._Observer(None)] if mode == "csi-py" else []
        server = grpc.server(futures.ThreadPoolExecutor(16), interceptors=observers)
        csi_pb2_grpc.add_NodeServicer_to_server(NodeService(driver), server)  # type: ignore[abstract]
    server.add_insecure_port("unix:" + sock)
    server.start()
    server.wait_for_termination()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--base", default="")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    import grpc

    from csi_py._proto import csi_pb2 as pb
    from csi_py._proto import csi_pb2_grpc

    modes = ["null", "no-interceptor", "csi-py"] + (["base"] if args.base else [])
    work = tempfile.mkdtemp(prefix="csi-dispatch-")
    procs: list[subprocess.Popen[bytes]] = []
    stubs = {}
    try:
        for mode in modes:
            sock, pool = os.path.join(work, mode + ".sock"), os.path.join(work, mode)
            os.makedirs(pool)
            env = dict(os.environ, PYTHONPATH=os.path.abspath(args.base)) \
                if mode == "base" else None
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve", sock,
                 "csi-py" if mode == "base" else mode, pool],
                stderr=subprocess.DEVNULL, env=env))
            channel = grpc.insecure_channel("unix:" + sock)
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs[mode] = csi_pb2_grpc.NodeStub(channel)
        took: dict[str, list[float]] = {m: [] for m in modes}
        for rnd in range(args.rounds):
            order = modes[rnd % len(modes):] + modes[:rnd % len(modes)]
            for mode in order:
                for _ in range(args.calls):
                    start = time.perf_counter()
                    stubs[mode].NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
                    took[mode].append(time.perf_counter() - start)
        print("| server | p50 ms | p90 ms |\n|---|---:|---:|")
        for mode, values in took.items():
            values.sort()
            print(f"| {mode} | {statistics.median(values) * 1e3:.3f} |"
                  f" {values[int(len(values) * 0.9)] * 1e3:.3f} |")
        print(f"\n{args.rounds} interleaved rounds of {args.calls} calls; load average"
              f" {[round(x, 2) for x in os.getloadavg()]}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

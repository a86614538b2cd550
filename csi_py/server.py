"""The gRPC server: Identity, Controller and Node on one owner-only unix socket."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc

from csi_py._proto import csi_pb2_grpc
from csi_py.core.driver import Driver
from csi_py.linux import files
from csi_py.logs import begin_request, end_request
from csi_py.rpc.controller import ControllerService
from csi_py.rpc.group_controller import GroupControllerService
from csi_py.rpc.identity import IdentityService
from csi_py.rpc.node import NodeService
from csi_py.rpc.snapshot_metadata import SnapshotMetadataService

if TYPE_CHECKING:
    from csi_py.observability.metrics import Metrics

log = logging.getLogger(__name__)


class SocketInUse(RuntimeError):
    """Another process is serving on the socket path."""


def check_socket_free(path: str) -> bool:
    """Whether `path` may be served on: True when nothing is there, False when a stale
    socket of a dead driver is (remove it before binding). Changes nothing.

    Raises SocketInUse when something still answers on it, and FileExistsError when the
    path is not a socket (we never delete a regular file or directory).
    """
    try:
        st = files.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        return False
    finally:
        probe.close()
    raise SocketInUse(f"another process is serving on {path}; stop it first")


def clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead driver. Idempotent. Raises what
    check_socket_free raises."""
    if not check_socket_free(path) and files.remove_if_present(path):
        log.info("removed stale socket %s", path)


class _Observer(grpc.ServerInterceptor):
    """Counts each RPC by method and status code and times it (Prometheus), gives it a
    request id that every log line written while it runs carries, and logs its time at
    debug level. Requests are never logged: some fields hold secrets.

    gRPC asks the interceptor for the handler of every call; the wrapped handler of a
    unary method is built once and kept (the services' handlers never change after
    the server starts), so a call costs one dict lookup here, not a new handler."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics  # None: no metrics endpoint, nothing to count for
        self._wrapped: dict[str, Any] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        full = handler_call_details.method
        wrapped = self._wrapped.get(full)
        if wrapped is not None:
            return wrapped
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(full.rsplit("/", 1)[-1], handler)
        self._wrapped[full] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary
        metrics = self.metrics

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            token = begin_request()
            try:
                return inner(request, context)
            except BaseException:
                status = context.code()  # set by context.abort()
                code = status.name if status is not None else "UNKNOWN"
                raise
            finally:
                took = time.perf_counter() - start
                if metrics is not None:
                    metrics.observe(method, code, took)
                # Failures are logged with their reason by rpc.errors, in this scope.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s -> %s in %.2f ms", method, code, took * 1e3)
                end_request(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Server:
    """Owns the grpc server and the driver's lifetime."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.path = driver.config.socket_path
        # prometheus_client (and the asyncio, http and email modules it imports) only
        # when metrics are served: without an endpoint nobody can read them, and
        # start-up does not pay for the import.
        self.metrics: Metrics | None = None
        if driver.config.metrics_address:
            from csi_py.observability.metrics import Metrics

            self.metrics = Metrics(driver)
        self.metrics_port = 0
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=driver.config.grpc_workers, thread_name_prefix="csi"
            ),
            interceptors=[_Observer(self.metrics)],
        )
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(driver), self._grpc)
        # The generated stubs mark every RPC abstract; at run time the base class answers
        # UNIMPLEMENTED for the ones we do not serve yet, which is what the spec asks.
        controller = ControllerService(driver)  # type: ignore[abstract]
        node = NodeService(driver)  # type: ignore[abstract]
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, self._grpc)
        csi_pb2_grpc.add_NodeServicer_to_server(node, self._grpc)
        csi_pb2_grpc.add_GroupControllerServicer_to_server(
            GroupControllerService(driver), self._grpc
        )
        csi_pb2_grpc.add_SnapshotMetadataServicer_to_server(
            SnapshotMetadataService(driver), self._grpc
        )
        self._stopped = threading.Event()

    def start(self) -> None:
        """Bind the socket (owner-only), start serving, then reconcile.

        Probe answers not-ready until reconciliation is done.
        """
        files.make_dirs(os.path.dirname(self.path))
        clear_stale_socket(self.path)
        with files.umask(0o177):  # the socket is born 0600: no window for others
            if self._grpc.add_insecure_port("unix:" + self.path) == 0:
                raise OSError(f"cannot listen on {self.path}")
            self._grpc.start()
        files.chmod_if_present(self.path, 0o600)
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.driver.config.metrics_address)
        log.info("serving %s on unix://%s (node %s, pool %s)", self.driver.config.driver_name,
                 self.path, self.driver.config.node_id, self.driver.config.pool)
        self.driver.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting calls, let running ones finish (up to `grace` s), close the
        catalog and remove the socket. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._grpc.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.close()
        self.driver.close()
        files.remove_if_present(self.path)
        log.info("stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        done.wait()
        self.stop()

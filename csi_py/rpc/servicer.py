"""What the CSI servicers share: the driver they serve and the wrappers of their methods."""

from __future__ import annotations

import functools
from typing import Any

import grpc

from csi_py.core.driver import Driver
from csi_py.rpc.errors import F, rpc_method


class Servicer:
    """One CSI service over a driver: its methods turn a request into calls on the
    driver's cores and their result into a response."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver


def ready_rpc(func: F) -> F:
    """:func:`rpc_method` for a call that needs the driver's state: until start-up
    reconciliation has finished it answers UNAVAILABLE (Driver.require_ready) without
    running `func`. Only Identity's calls, the capability lists and NodeGetInfo are
    answered earlier. Adds no side effect of its own, so it keeps `func` idempotent."""

    @functools.wraps(func)
    def when_ready(self: Servicer, request: Any, context: grpc.ServicerContext) -> Any:
        self.driver.require_ready()
        return func(self, request, context)

    return rpc_method(when_ready)  # type: ignore[return-value]

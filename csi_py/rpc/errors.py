"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from csi_py.core.errmap import translate
from csi_py.domain import errors as e
from csi_py.domain.errors import Subject

log = logging.getLogger(__name__)

CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (e.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Aborted, grpc.StatusCode.ABORTED),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.Internal, grpc.StatusCode.INTERNAL),
    (e.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code for a domain error, or for a kernel, pool or catalog failure
    (translated by core/errmap.py first); INTERNAL for anything unexpected."""
    exc = translate(exc) or exc
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def request_subject(request: Any) -> Subject | None:
    """What a request is about: its volume, snapshot or group snapshot (by id, or by
    the name being created), or None for a request about no one object."""
    fields = request.DESCRIPTOR.fields_by_name
    kind = request.DESCRIPTOR.name
    keys: tuple[str, ...]
    if "GroupSnapshot" in kind:
        noun, keys = "group snapshot", ("group_snapshot_id", "name")
    elif "Snapshot" in kind:
        noun, keys = "snapshot", ("snapshot_id", "name", "source_volume_id")
    else:
        noun, keys = "volume", ("volume_id", "name")
    key = next((k for k in keys if k in fields and getattr(request, k)), None)
    if key is None:
        return None
    value = getattr(request, key)
    if key == "source_volume_id":
        noun = "volume"
    return Subject(noun, name=value) if key == "name" else Subject(noun, id=value)


def message_for(exc: e.DriverError, request: Any) -> str:
    """The status message of a domain error, formatted here once, so every message says
    which object the request concerns: an error that carries its subject is shown as it
    is ("<subject>: <what>: <cause>"), after the request's object when that is another
    one (the volume being published when the node is full, the group being cut when a
    member is missing); one without a subject gets the request's object in front."""
    if exc.subject is None:
        return with_subject(request, str(exc))
    asked = request_subject(request)
    if asked is None or asked.same_object(exc.subject):
        return str(exc)
    return f"{asked}: {exc}"


def with_subject(request: Any, message: str) -> str:
    """`message` about the request's object, for errors that carry no subject. Every
    error that names an object carries it as its subject (controller and node side
    alike), so this never guesses from the text: what is left here are the checks of
    one request field (core/validation.py, core/rules.py, rpc/convert.py,
    core/paging.py), whose message names the field; kernel, tool, pool and catalog
    failures translated by core/errmap.py, whose message names the path or device;
    Unavailable before start-up has finished; and unexpected failures. Pure."""
    subject = request_subject(request)
    return message if subject is None else f"{subject}: {message}"


# Status messages travel in an HTTP/2 trailer, which gRPC caps (8 KiB by default): a
# longer one (e.g. echoing a huge request field) would turn the answer into the
# transport's RESOURCE_EXHAUSTED. Every message is cut to this many characters.
MAX_MESSAGE = 2048


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def rpc_method(func: F) -> F:
    """Wrap a servicer method: domain errors become the matching status code with the
    error's message; unexpected exceptions become INTERNAL and are logged with a trace."""

    @functools.wraps(func)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return func(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the client must get a status, not a hang
            known = translate(exc)
            if known is None:
                log.exception("%s failed unexpectedly", func.__name__)
                context.abort(grpc.StatusCode.INTERNAL, _cut(with_subject(
                    request, f"{func.__name__}: {type(exc).__name__}: {exc}")))
                raise  # abort() raised already; this only tells the type checker
            code = status_for(known)
            # A bare ValueError is almost always input that reached a parser, but it
            # may be a bug: its trace is kept in the log.
            log.log(logging.WARNING if type(exc) is ValueError else logging.INFO,
                    "%s -> %s: %s", func.__name__, code.name, known,
                    exc_info=type(exc) is ValueError)
            context.abort(code, _cut(message_for(known, request)))

    return wrapper  # type: ignore[return-value]

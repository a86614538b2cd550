"""The domain's errors, each with an optional subject and cause; rpc/errors.py is the one
place that maps them to gRPC status codes and writes their messages.

Every error should name what it is about and the cause, so the person reading
`kubectl describe` knows what to do next. An error built with a structured `subject`
(kind, id or name, path) and a `cause` says so in one fixed form, "<subject>: <what>:
<cause>", and rpc/errors.py adds nothing to it; one built with a message alone is
prefixed there with the request's object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# How long a caller-given value may be before a message shows only its start: a
# status message travels in a size-limited gRPC trailer.
_SHOWN = 256
_PLAIN = re.compile(r"[\w.~:/-]+")


def shown(value: str) -> str:
    """A caller-given id as messages show it: bare when it is a plain token (every id
    this driver issues is), else quoted, and cut when it is very long. Pure."""
    if len(value) > _SHOWN:
        return f"{value[:64]!r}... ({len(value)} chars)"
    return value if _PLAIN.fullmatch(value) else repr(value)


@dataclass(frozen=True)
class Subject:
    """What an error is about: a kind ("volume", "snapshot", "group snapshot", "node",
    "target", ...) and the id, the name (of an object being created) or the path
    that names it."""

    kind: str
    id: str = ""
    name: str = ""
    path: str = ""

    def same_object(self, other: Subject) -> bool:
        """Whether `other` names the same object (same kind, and the same id or the
        same name). Pure."""
        return self.kind == other.kind and (
            bool(self.id) and self.id == other.id or bool(self.name) and self.name == other.name)

    def __str__(self) -> str:
        words = [self.kind] if self.kind else []
        if self.id:
            words.append(shown(self.id))
        if self.name:
            words.append(repr(self.name) if len(self.name) <= _SHOWN else shown(self.name))
        if self.path:
            words.append(self.path)
        return " ".join(words)


def volume(volume_id: str = "", name: str = "") -> Subject:
    """The subject of an error about a volume, by id or by the name being created."""
    return Subject("volume", id=volume_id, name=name)


def snapshot(snapshot_id: str = "", name: str = "") -> Subject:
    """The subject of an error about a snapshot, by id or by name."""
    return Subject("snapshot", id=snapshot_id, name=name)


def group_snapshot(group_id: str = "", name: str = "") -> Subject:
    """The subject of an error about a group snapshot, by id or by name."""
    return Subject("group snapshot", id=group_id, name=name)


class DriverError(Exception):
    """Base of all domain errors: `message` says what is wrong (and what to do);
    `subject`, when given, what it is about; `cause`, when given, why (an errno's
    text, a tool's complaint). str() is the whole message."""

    def __init__(self, message: str = "", *, subject: Subject | None = None,
                 cause: str = "") -> None:
        self.message = message
        self.subject = subject
        self.cause = cause
        super().__init__(self.text())

    def text(self) -> str:
        """The message in its one form: "<subject>: <message>: <cause>"."""
        parts = [str(self.subject)] if self.subject else []
        parts += [p for p in (self.message, self.cause) if p]
        return ": ".join(parts)


class InvalidArgument(DriverError):
    """The request itself is malformed or asks for something we never support."""


class NotFound(DriverError):
    """The volume, snapshot or node named in the request does not exist."""


class AlreadyExists(DriverError):
    """The name or target is taken by something with incompatible arguments."""


class FailedPrecondition(DriverError):
    """The request is valid but the volume is not in a state that allows it."""


class OutOfRange(DriverError):
    """A requested capacity we cannot satisfy by the spec's capacity rules."""


class ResourceExhausted(DriverError):
    """The pool is out of space, or a per-node limit is reached."""


class Aborted(DriverError):
    """Another operation on the same object is in flight, or a token is stale; retry later."""


class Unavailable(DriverError):
    """The driver is not ready yet (start-up reconciliation still running)."""


class Unimplemented(DriverError):
    """This driver instance does not serve the call (it does not advertise it)."""


class Internal(DriverError):
    """The kernel or a tool failed in a way the caller cannot fix by changing the request."""

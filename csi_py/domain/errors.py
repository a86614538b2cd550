"""Domain errors. rpc/errors.py is the one place that maps them to gRPC status codes.

Every message should name the volume (or snapshot, path, node) and the cause, so the
person reading `kubectl describe` knows what to do next.
"""


class DriverError(Exception):
    """Base of all domain errors."""


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

"""The driver's log formats: `text` (one readable line per event) and `json` (one object
per line with the field names of Kubernetes' JSON logs: ts, caller, logger, msg, v, err),
and the request id that ties every line written during an RPC to that RPC.

A log line never spans two lines: control characters in messages (a newline in a name a
client sent, say) are escaped, and JSON escapes them by itself."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

LOG_FORMATS = ("text", "json")

# The id of the RPC being served by this thread, "" outside one.
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("csi_request_id", default="")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def current_request_id() -> str:
    return _request_id.get()


def begin_request() -> contextvars.Token[str]:
    """Give the RPC this thread starts serving a fresh request id (16 hex digits); pass
    the token to end_request when it is done. The interceptor's form of request_scope
    (no generator per call on the hot path)."""
    return _request_id.set(secrets.token_hex(8))


def end_request(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)


@contextmanager
def request_scope() -> Iterator[str]:
    """Give the RPC served inside the block a fresh request id (16 hex digits), seen by
    every log line written meanwhile in this thread."""
    token = _request_id.set(secrets.token_hex(8))
    try:
        yield _request_id.get()
    finally:
        _request_id.reset(token)


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (\\n, \\x1b, ...), so it stays
    on one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00,000 INFO csi_py.core.controller [req=…]: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(req)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        saved = record.message
        record.message = escape_controls(saved)
        rid = getattr(record, "request_id", "")
        record.req = f" [req={rid}]" if rid else ""
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved

    def format(self, record: logging.LogRecord) -> str:
        # The message is escaped already; what breaks lines now is a traceback, which
        # stays readable on one line with " | " between its lines.
        return super().format(record).replace("\n", " | ")


# Python levels as klog verbosity: errors and warnings and info are v=0, debug is v=4
# (klog's customary level for debugging detail).
_VERBOSITY = {logging.DEBUG: 4}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with Kubernetes' JSON log field names."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "caller": f"{record.filename}:{record.lineno}",
            "logger": record.name,
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "v": _VERBOSITY.get(record.levelno, 0),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["requestID"] = rid
        if record.exc_info:
            entry["err"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(fmt: str, stream: IO[str]) -> logging.Handler:
    """A handler writing `fmt` lines (with request ids) to `stream`. Raises ValueError
    for an unknown format."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {LOG_FORMATS}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    return handler


def setup(level: str = "INFO", fmt: str = "text") -> None:
    """Send the process's logs to stderr in `fmt` at `level`. Idempotent: replaces the
    handlers an earlier call installed. Raises ValueError for an unknown format."""
    handler = make_handler(fmt, sys.stderr)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

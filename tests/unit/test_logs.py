"""The log formats: klog-style JSON, one-line text, request ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from csi_py import logs


def _capture(fmt):
    stream = io.StringIO()
    handler = logs.make_handler(fmt, stream)
    logger = logging.getLogger("csi_py.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream, handler


def test_json_lines_carry_klog_field_names_and_the_request_id():
    logger, stream, handler = _capture("json")
    try:
        logger.info("outside %s", "any rpc")
        with logs.request_scope() as rid:
            logger.debug("created volume name=%s", "a\nb")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the newline in the name and the traceback stay inside lines
    first, second, third = (json.loads(line) for line in lines)
    assert {"ts", "caller", "logger", "msg", "v"} <= set(first)
    assert first["msg"] == "outside any rpc" and first["v"] == 0
    assert "requestID" not in first
    assert second["requestID"] == rid and len(rid) == 16 and second["v"] == 4
    assert second["msg"] == "created volume name=a\nb"
    assert third["requestID"] == rid and "ValueError: boom" in third["err"]
    assert third["caller"].startswith("test_logs.py:")


def test_text_lines_never_split_and_show_the_request_id():
    logger, stream, handler = _capture("text")
    try:
        with logs.request_scope() as rid:
            logger.info("created volume name=%s", "evil\nINFO forged line\x1b[31m")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert f"[req={rid}]" in lines[0]
    assert lines[0].endswith("created volume name=evil\\nINFO forged line\\x1b[31m")
    assert "ValueError: boom" in lines[1]


def test_request_ids_differ_and_end_with_the_scope():
    with logs.request_scope() as first:
        assert logs.current_request_id() == first
    with logs.request_scope() as second:
        pass
    assert first != second and logs.current_request_id() == ""


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        logs.make_handler("xml", io.StringIO())

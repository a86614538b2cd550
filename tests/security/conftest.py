"""Fixtures of the hostile-input tests: a sandbox with a sentinel tree next to the pool,
and a driver whose largest volume is small (fuzzed sizes must not fill the disk)."""

from __future__ import annotations

import pytest

from tests.security.fuzzing import SENT
from tests.security.sandbox import Sandbox

MAX_VOLUME = 64 << 20


@pytest.fixture
def driver_options() -> dict:
    return {"max_volume_bytes": MAX_VOLUME}


@pytest.fixture
def sandbox(workdir: str) -> Sandbox:
    return Sandbox(workdir)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SENT["requests"]:
        codes = ", ".join(f"{k} {n}" for k, n in sorted(SENT.items()) if k != "requests")
        terminalreporter.write_line(f"fuzz requests sent: {SENT['requests']} ({codes})")

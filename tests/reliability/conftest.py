"""Fixtures of the reliability tests, and the crash-point tally at the end of a run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from csi_py.core.crashpoints import POINTS
from tests.reliability.harness import EXERCISED, DriverProcess


@pytest.fixture
def driver_process(workdir: str) -> Iterator[DriverProcess]:
    """A driver in its own process on a private pool in `workdir` (not started yet).
    Stopped before the workdir's leak check runs."""
    proc = DriverProcess(workdir)
    try:
        yield proc
    finally:
        proc.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if EXERCISED:
        terminalreporter.write_line(
            f"crash points exercised: {len(EXERCISED)} of {len(POINTS)}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "churn: the long churn run (about a minute on 2 cores); deselect with"
        " -m 'not churn'")

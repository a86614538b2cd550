"""Fixtures the per-RPC conformance tests share (tests/conftest.py gives them the driver)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from csi_py._proto import csi_pb2 as pb
from tests.conformance.helpers import NodeSession, create, node_session
from tests.lifecycle import BLOCK, EXT4


@pytest.fixture
def vol(driver) -> pb.Volume:
    """A 32 MiB ext4 volume that may also be used as a block volume."""
    return create(driver, "pvc-vol", caps=[EXT4, BLOCK])


@pytest.fixture
def node(driver) -> Iterator[NodeSession]:
    """A node session: at the end it unpublishes and unstages what the test set up."""
    with node_session(driver) as session:
        yield session

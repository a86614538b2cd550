"""Property-based fuzzing of every RPC's fields through real gRPC against a real driver.

For every RPC of the proto, hypothesis generates requests field by field (see
fuzzing.py): hostile strings, paths, sizes, maps, capabilities and mount flags, mixed
with real ids so the fuzzing also reaches deep into the driver. For each request:

- the answer is OK or a status code the spec defines (never UNKNOWN or INTERNAL);
- nothing outside the pool and the given target paths was created, changed or removed
  (a fingerprint of the sentinel tree, the symlink bait and the rest of the test's
  directory is compared after every request), and nothing is mounted outside the area.

After each RPC's run the driver still answers Probe ready, and once everything the
fuzzing made is taken down, no volume, file, loop device or mount is left.

At least 10,000 requests are sent in total (CSI_PY_FUZZ_EXAMPLES changes the number of
examples per RPC).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from csi_py._proto import csi_pb2 as pb
from tests.conftest import NODE_ID, needs_root
from tests.lifecycle import Volumes
from tests.reliability.harness import disagreements
from tests.security.fuzzing import (
    SENT,
    TEARDOWN_SURPRISES,
    UNSERVED,
    Targets,
    methods,
    request,
    send,
    stub_call,
    tear_down_everything,
)

pytestmark = [pytest.mark.integration, needs_root()]

EXAMPLES = int(os.environ.get("CSI_PY_FUZZ_EXAMPLES", "450"))
MIN_REQUESTS = 10_000
METHODS = [pytest.param(svc, m, id=f"{svc}.{m.name}") for svc, m in methods()]


@pytest.fixture
def real(driver, sandbox):
    """Real objects for the fuzzing to find: an ext4 volume attached, staged and
    published, a block volume with a snapshot and a group snapshot."""
    targets = Targets(sandbox)
    v = Volumes(driver.client)
    a = v.create("real-a", "ext4").volume_id
    b = v.create("real-b", "block").volume_id
    targets.volume_ids += [a, b]
    v.attach(a, "ext4")
    v.stage(a, "ext4", os.path.join(sandbox.area, "stage0"))
    v.publish(a, "ext4", os.path.join(sandbox.area, "stage0"),
              os.path.join(sandbox.area, "pub0"))
    targets.snapshot_ids.append(v.snapshot(b, "real-snap").snapshot_id)
    group = v.group_snapshot("real-group", [b])
    targets.group_ids.append(group.group_snapshot_id)
    targets.snapshot_ids += [s.snapshot_id for s in group.snapshots]
    yield targets
    TEARDOWN_SURPRISES.clear()
    tear_down_everything(driver.client, targets)
    assert TEARDOWN_SURPRISES == []
    assert disagreements(driver.workdir, driver.pool, expect_empty=True) == []


@pytest.mark.parametrize(("service", "method"), METHODS)
def test_every_answer_is_a_spec_code_and_nothing_outside_is_touched(
    driver, sandbox, real, service, method
) -> None:
    call = stub_call(driver.client.channel, service, method)
    before = sandbox.fingerprint()
    examples = 50 if service in UNSERVED else EXAMPLES
    first_damage: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message=request(method, real))
    def fuzz(message) -> None:  # type: ignore[no-untyped-def]
        code = send(call, message, service)
        # The first request that did damage is kept: the damage stays, so hypothesis
        # would shrink to whatever request came next.
        if not first_damage and (sandbox.fingerprint() != before or sandbox.foreign_mounts()):
            first_damage.append(f"{code.name} for {message!r}")
        assert not first_damage, f"outside the pool and area: changed by {first_damage[0]}"

    fuzz()
    probe = driver.client.identity.Probe(pb.ProbeRequest(), timeout=10)
    assert probe.ready.value, "the driver is not ready after the fuzzing"
    info = driver.client.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
    assert info.node_id == NODE_ID


def test_zz_at_least_ten_thousand_requests_were_sent(request) -> None:
    """Runs after the fuzzing above (file order), when all of it was selected."""
    name = test_every_answer_is_a_spec_code_and_nothing_outside_is_touched.__name__
    ran = [item for item in request.session.items if item.originalname == name]
    if len(ran) != len(METHODS) or EXAMPLES < 450:
        pytest.skip("only part of the fuzzing was selected")
    print(f"fuzz requests sent: {SENT['requests']}")
    assert SENT["requests"] >= MIN_REQUESTS


"""csi-sanity v5.4.0 (the community's conformance suite) against a fresh csi-py, in
mount mode with ext4 and xfs and in block mode. Each run has its own pool and socket;
hack/csi-sanity checks that nothing is left behind."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOBIN = os.path.join(os.environ.get("GOPATH", os.path.expanduser("~/go")), "bin")

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.skipif(os.geteuid() != 0, reason="csi-sanity needs root (loop devices, mounts)"),
]


def sanity_available() -> bool:
    return bool(shutil.which("csi-sanity")) or os.path.exists(os.path.join(GOBIN, "csi-sanity"))


@pytest.mark.parametrize("mode", ["ext4", "xfs", "block"])
def test_csi_sanity_passes(mode):
    if not sanity_available():
        if os.environ.get("CI") == "true":
            pytest.fail("csi-sanity is not installed; hack/setup installs it")
        pytest.skip("csi-sanity is not installed; run hack/setup")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "hack", "csi-sanity"), "--mode", mode],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
    )
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    assert result.returncode == 0, f"csi-sanity ({mode}) failed:\n{result.stdout[-4000:]}"
    summary = result.stdout.splitlines()[0]
    assert " 0 failed" in summary and " 0 passed" not in summary, summary

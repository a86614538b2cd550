"""hack/setup installs only into a virtual environment, never the system interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "losetup")),
    reason="would apt-get install the mkfs tools first",
)
def test_setup_refuses_an_interpreter_that_is_not_a_venv():
    system_python = os.path.join(sys.base_prefix, "bin", "python3")
    result = subprocess.run(
        [os.path.join(REPO, "hack", "setup"), "--demo"], capture_output=True, text=True,
        env={**os.environ, "PYTHON": system_python}, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not a virtual environment" in result.stderr
    assert "pip install" not in result.stdout


def test_setup_rejects_unknown_arguments():
    result = subprocess.run([os.path.join(REPO, "hack", "setup"), "--bogus"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage: hack/setup" in result.stderr

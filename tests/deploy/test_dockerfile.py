"""The image: hadolint passes, the build is multi-stage with a pinned, slim final stage
that installs only the pinned filesystem tools, and the build context that .dockerignore
lets through is enough to build a wheel that has the `csi-py` command and the generated
gRPC code."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deploy import tools

DOCKERFILE = tools.REPO / "Dockerfile"
TOOLS_IN_IMAGE = {"e2fsprogs", "xfsprogs", "btrfs-progs", "util-linux"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|python3-dev|libc6-dev)\b")


def _lines() -> list[str]:
    """Dockerfile instructions with continuations joined and comments dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in _lines():
        if line.upper().startswith("FROM "):
            stages.append([line])
        elif stages:
            stages[-1].append(line)
    return stages


def _args() -> dict[str, str]:
    args = {}
    for line in _lines():
        m = re.match(r"ARG\s+(\w+)=(\S+)", line)
        if m:
            args[m.group(1)] = m.group(2)
    return args


def test_hadolint_passes() -> None:
    hadolint = tools.require_tool("hadolint")
    tools.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])


def test_multi_stage_with_a_pinned_slim_final_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2, "build the wheel in its own stage"
    assert re.match(r"FROM \S+ AS builder$", stages[0][0], re.I)
    base = _args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[2-9]\.\d+-slim-\w+", base), f"pin an exact tag: {base}"
    final = stages[-1]
    assert final[0] in ("FROM ${PYTHON_IMAGE}", f"FROM {base}")
    text = "\n".join(final)
    assert not COMPILERS.search(text), "no compilers in the final image"
    assert "COPY --from=builder /wheels" in text
    assert "--no-index" in text, "the final stage installs only the built wheels"
    assert re.search(r'ENTRYPOINT \["csi-py", "serve"\]', text)
    assert any(line.startswith("LABEL ") for line in final)


def test_final_stage_installs_only_the_pinned_tools() -> None:
    final = "\n".join(_stages()[-1])
    installs = re.findall(r"apt-get install ([^&]*)", final)
    assert len(installs) == 1
    assert "--no-install-recommends" in installs[0] and "-y" in installs[0]
    assert "DEBIAN_FRONTEND=noninteractive" in final
    assert "rm -rf /var/lib/apt/lists/*" in final
    args = _args()
    packages = {}
    for token in installs[0].split():
        m = re.fullmatch(r'([a-z0-9.+-]+)="?\$\{(\w+)\}"?', token)
        if m:
            packages[m.group(1)] = args[m.group(2)]
        else:
            assert token.startswith("-"), f"unpinned package {token}"
    assert set(packages) == TOOLS_IN_IMAGE


def test_pinned_debian_versions_exist_here() -> None:
    """On a Debian machine of the image's release, the pins are real candidates."""
    release = re.search(r"-slim-(\w+)$", _args()["PYTHON_IMAGE"]).group(1)
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    if f"VERSION_CODENAME={release}" not in os_release or not shutil.which("apt-cache"):
        pytest.skip(f"not a Debian {release} machine: cannot look up the pinned versions")
    pins = {"e2fsprogs": "E2FSPROGS_VERSION", "xfsprogs": "XFSPROGS_VERSION",
            "btrfs-progs": "BTRFS_PROGS_VERSION", "util-linux": "UTIL_LINUX_VERSION"}
    args = _args()
    for package, arg in pins.items():
        out = subprocess.run(["apt-cache", "madison", package], capture_output=True,
                             text=True, timeout=60).stdout
        if not out.strip():
            pytest.skip("apt has no package lists here (run apt-get update)")
        versions = {line.split("|")[1].strip() for line in out.splitlines() if "|" in line}
        assert args[arg] in versions, f"{package}={args[arg]} is not in {sorted(versions)}"


def test_image_version_matches_the_package() -> None:
    project = tomllib.loads((tools.REPO / "pyproject.toml").read_text())["project"]
    assert _args()["VERSION"] == project["version"]
    chart = (tools.CHART / "Chart.yaml").read_text()
    assert f'appVersion: "{project["version"]}"' in chart
    for layout in tools.LAYOUTS:
        text = (tools.DEPLOY / layout / "daemonset.yaml").read_text()
        assert f"image: csi-py:{project['version']}" in text


def _ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its
    parent directories decides; '!' re-includes. (fnmatch's * also crosses '/', which
    is close enough for the simple patterns we use.)"""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, pattern in patterns:
        pat = pattern.strip("/")
        alternatives = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(c, a) for c in prefixes for a in alternatives):
            ignored = not negate
    return ignored


def _context(dest: Path) -> None:
    patterns = []
    for line in (tools.REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), line.lstrip("!")))
    for root, dirs, files in os.walk(tools.REPO):
        rel_root = os.path.relpath(root, tools.REPO)
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not _ignored(rel, patterns):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.join(root, name), target)


def test_build_context_builds_the_wheel(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _context(context)
    shipped = {str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()}
    assert "pyproject.toml" in shipped and "README.md" in shipped
    assert not any(p.startswith(("tests/", ".git", "benchmarks/", "deploy/")) for p in shipped)
    assert not any("__pycache__" in p for p in shipped)
    # What the Dockerfile COPYs must be in the context.
    for line in _lines():
        m = re.match(r"COPY (?!--from)(.+) \S+$", line)
        if m:
            for src in m.group(1).split():
                assert (context / src).exists(), f"COPY {src}: not in the build context"
    try:
        import setuptools  # noqa: F401
    except ImportError:
        tools.unavailable("setuptools", "needed to build the wheel offline")
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("csipy_loop-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "csi_py/_proto/csi_pb2.py" in names
        assert "csi_py/_proto/csi_pb2_grpc.py" in names
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "csi-py = csi_py.cli:main" in zf.read(entry_points).decode()

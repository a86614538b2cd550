"""The import graph of csi_py/, read with ``ast`` (nothing is imported or run):

1. Imports flow down the layers, never up (a module may import its own layer and the
   layers below it):

       top level   cli, commands, demo, pool_cli, __main__ (the command line)
       server      server.py: hosts the gRPC server, wires rpc, observability and logs
       rpc         rpc/: gRPC servicers and the client; the CSI wire format
       observability  observability/: Prometheus metrics read from the driver
       core        core/: the CSI logic over the catalog and the kernel
       config      config.py: the validated Config (reads the filesystem table)
       state       state/: the catalog and the records (stored through linux.files)
       linux       linux/: everything that touches the kernel
       domain      domain/: model, units, limits, ids, errors, retry; logs.py, output.py and
                   csi_py/__init__.py sit here too, as leaves that import nothing of ours

   The domain types live only in domain/: the old re-export shims (core/model.py,
   core/errors.py, core/snapshot_ids.py) are gone and must not come back.
2. Only rpc/ and server.py import grpc or the generated csi_py._proto.
3. Only linux/ calls the kernel: imports fcntl, ctypes, subprocess, shutil, select,
   mmap or pty, calls os.* beyond path and name handling (os.path's string
   functions, os.environ, os.sep, ...; os.path.exists, realpath and the other
   os.path functions that stat the filesystem count as calls), or names a /proc or
   /sys path. KERNEL_EXCEPTIONS would list a module allowed to with what it calls and
   why; it is empty, so a new violation fails here (and so would an entry no longer
   needed). GRPC_EXCEPTIONS does the same for point 2.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import csi_py

ROOT = pathlib.Path(csi_py.__file__).parent

# Lower rank = lower layer. The key is a module's top-level part under csi_py.
RANK = {
    "__init__": 0, "domain": 0, "logs": 0, "output": 0,
    "linux": 1,
    "state": 2,
    "config": 3,
    "core": 4,
    "observability": 5,
    "rpc": 6,
    "server": 7,
    "cli": 8, "commands": 8, "demo": 8, "pool_cli": 8, "__main__": 8,
}  # fmt: skip
OLD_SHIMS = ("core/model.py", "core/errors.py", "core/snapshot_ids.py")
GRPC_ALLOWED = {"rpc", "server"}
# Modules outside rpc/ and server.py allowed to import grpc or csi_py._proto, with
# why. None: the CLI and the demo make their calls through rpc/client.py's Calls.
GRPC_EXCEPTIONS: dict[str, str] = {}
KERNEL_MODULES = {"fcntl", "ctypes", "subprocess", "shutil", "select", "mmap", "pty"}
# os names that only handle paths, names and the environment: no system call (or
# none that touches a volume).
PURE_OS = {
    "path", "environ", "getenv", "sep", "fspath", "fsencode", "fsdecode", "PathLike",
    "devnull", "linesep", "name", "getpid", "cpu_count", "strerror",
}  # fmt: skip
# os.path functions that ask the kernel (stat, lstat, readlink) rather than only
# handling strings.
PROBING_OS_PATH = {
    "exists", "lexists", "isdir", "isfile", "islink", "ismount", "getsize", "getmtime",
    "getatime", "getctime", "realpath", "samefile", "sameopenfile", "samestat",
}  # fmt: skip


@dataclass(frozen=True)
class Module:
    name: str  # "csi_py.core.node"
    layer: str  # "core"
    tree: ast.Module


def _modules() -> list[Module]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "_proto":
            continue  # generated
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        name = ".".join(["csi_py", *parts]) if parts != ["__init__"] else "csi_py"
        found.append(Module(name, parts[0], ast.parse(path.read_text(), str(path))))
    return found


MODULES = _modules()


def _imports(module: Module) -> set[str]:
    """Absolute names of everything ``module`` imports (each ``from x import y`` as
    x.y as well as x, since y may be a submodule)."""
    names = set()
    package = module.name if module.name.count(".") < 1 or _is_package(module) \
        else module.name.rsplit(".", 1)[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_package(module: Module) -> bool:
    return (ROOT / pathlib.Path(*module.name.split(".")[1:]) / "__init__.py").exists()


def _layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "csi_py":
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_every_module_has_a_layer():
    assert {m.layer for m in MODULES} <= set(RANK), "add the new top-level module to RANK"
    assert len(MODULES) > 50  # the walk found the package


def test_no_import_runs_upward():
    upward = []
    for module in MODULES:
        for name in _imports(module):
            layer = _layer_of(name)
            if layer is None or layer == "_proto" or layer not in RANK:
                continue
            if RANK[layer] > RANK[module.layer]:
                upward.append(f"{module.name} ({module.layer}) imports {name} ({layer})")
    assert sorted(set(upward)) == []


def test_the_domain_is_defined_once():
    """No re-export of the domain types under core/ (the shims tests once imported)."""
    assert [p for p in OLD_SHIMS if (ROOT / p).exists()] == []
    assert {"csi_py.domain.model", "csi_py.domain.errors",
            "csi_py.domain.snapshot_ids"} <= {m.name for m in MODULES}


def test_only_rpc_and_server_import_grpc_or_the_generated_code():
    found = {}
    for module in MODULES:
        if module.layer in GRPC_ALLOWED:
            continue
        bad = sorted(n for n in _imports(module)
                     if n.split(".")[0] == "grpc" or n.startswith("csi_py._proto"))
        if bad:
            found[module.name] = bad
    assert sorted(found) == sorted(GRPC_EXCEPTIONS), found


# Each module outside linux/ that calls the kernel itself: the exact calls, and why.
# None: the demo's process, file and sysfs work is in linux/ (exec.spawn, files,
# process.is_root, the Host's loop and mount listings). An entry no longer needed
# fails the test as much as a new call does.
KERNEL_EXCEPTIONS: dict[str, tuple[set[str], str]] = {}


def _kernel_calls(module: Module) -> set[str]:
    calls = set()
    os_aliases = {"os"}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in KERNEL_MODULES:
                    calls.add(f"import {alias.name}")
                if alias.name == "os" and alias.asname:
                    os_aliases.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            top = node.module.split(".")[0]
            if top in KERNEL_MODULES:
                calls.add(f"import {node.module}")
            if node.module == "os":
                calls.update(f"os.{a.name}" for a in node.names if a.name not in PURE_OS)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in os_aliases and node.attr not in PURE_OS):
            calls.add(f"os.{node.attr}")
        elif (isinstance(node, ast.Attribute) and node.attr in PROBING_OS_PATH
              and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
              and isinstance(node.value.value, ast.Name) and node.value.value.id in os_aliases):
            calls.add(f"os.path.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(("/proc/", "/sys/")) or node.value in ("/proc", "/sys"):
                calls.add(f"reads {node.value.split('/')[1]}")
    return calls


def test_only_linux_calls_the_kernel():
    found = {m.name: sorted(_kernel_calls(m)) for m in MODULES if m.layer != "linux"}
    found = {name: calls for name, calls in found.items() if calls}
    allowed = {name: sorted(calls) for name, (calls, _why) in KERNEL_EXCEPTIONS.items()}
    assert found == allowed


def test_the_checks_see_what_they_look_for():
    """The walker finds a known upward-free import, a grpc import and kernel calls, so
    an empty answer above means clean, not blind."""
    by_name = {m.name: m for m in MODULES}
    assert "csi_py.domain.model" in _imports(by_name["csi_py.state.catalog"])
    assert "grpc" in _imports(by_name["csi_py.rpc.errors"])
    assert {"import fcntl", "os.open"} <= _kernel_calls(by_name["csi_py.linux.fs"])
    assert "reads proc" in _kernel_calls(by_name["csi_py.linux.filesystems.base"])
    assert "os.path.realpath" in _kernel_calls(by_name["csi_py.linux.files"])
    assert not {c for c in _kernel_calls(by_name["csi_py.config"]) if c.startswith("os.")}
    relative = ast.parse("from . import model\nfrom ..linux import fs\n")
    inside = Module("csi_py.core.node", "core", relative)
    assert {"csi_py.core.model", "csi_py.linux.fs"} <= _imports(inside)

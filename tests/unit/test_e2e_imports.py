"""tests/e2e runs under the local cluster's own small venv (hack/e2e gives it only pytest,
the kubernetes client and PyYAML, as requirements-deploy.txt pins them), not the driver's:
its modules may import only those, the standard library, each other and csi_py.domain
(pure, no third-party import). A helper imported from elsewhere in tests/ that pulls in
grpc broke the cluster run once. (tests/e2e/standins/ are not run by pytest: they run in
images built on the csi-py image, which has the driver's packages.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

E2E = Path(__file__).resolve().parents[1] / "e2e"
ALLOWED_THIRD_PARTY = {"pytest", "kubernetes", "yaml"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_e2e_modules_import_only_what_the_cluster_venv_has():
    bad = {}
    for path in sorted(E2E.rglob("*.py")):
        if "standins" in path.parts:
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            ok = (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
                  or name.startswith("tests.e2e") or name.startswith("csi_py.domain")
                  or top == "__future__")
            if not ok:
                bad.setdefault(str(path.relative_to(E2E)), []).append(name)
    assert not bad, bad

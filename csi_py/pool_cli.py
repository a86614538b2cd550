"""`csi-py pool check|rebuild --pool DIR`: an operator's view of core/rebuild.py."""

from __future__ import annotations

import sys


def run(pool_root: str, action: str) -> int:
    """Print what a rebuild finds (check) or did (rebuild). Exit status: 0 when the
    catalog already agrees with the pool (check) or was rebuilt; 1 when check found
    something to adopt or repair; 2 when the pool or catalog cannot be used."""
    from csi_py.core.pool import Pool, PoolError
    from csi_py.core.rebuild import check_pool
    from csi_py.linux import real_host
    from csi_py.state.errors import CatalogError

    try:
        report = check_pool(Pool(pool_root), real_host(), apply=action == "rebuild")
    except (CatalogError, PoolError, OSError) as exc:
        print(f"csi-py: pool {pool_root}: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    counts = " ".join(f"{k}={n}" for k, n in report.counts().items())
    verb = "rebuilt" if action == "rebuild" else "checked"
    print(f"{verb} {pool_root}: {counts}")
    return 1 if action == "check" and report.lines() else 0

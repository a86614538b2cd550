"""The crash-point list and the code agree, and an unarmed point does nothing."""

import pathlib
import re
import subprocess
import sys

from csi_py.core import crashpoints

CORE = pathlib.Path(crashpoints.__file__).parent


def points_in_code() -> set[str]:
    found: set[str] = set()
    for path in CORE.glob("*.py"):
        for fstring, name in re.findall(r'crash_point\((f?)"([^"]+)"', path.read_text()):
            if fstring:  # f"{step}.x" with step in create/restore
                found |= {name.replace("{step}", step) for step in ("create", "restore")}
            else:
                found.add(name)
        for a, b in re.findall(r'crash_point\(\s*"([^"]+)" if origin is None else "([^"]+)"',
                               path.read_text()):
            found |= {a, b}
    return found


def test_every_point_in_the_list_is_in_the_code_and_back():
    assert points_in_code() == set(crashpoints.POINTS)


def test_points_are_unique():
    assert len(crashpoints.POINTS) == len(set(crashpoints.POINTS))


def test_an_unarmed_point_returns():
    crashpoints.crash_point("create.recorded")  # not armed in this process


def test_an_armed_point_kills_the_process_with_sigkill():
    code = ("from csi_py.core.crashpoints import crash_point;"
            " crash_point('delete.marked'); print('alive')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"CSI_PY_CRASH_POINT": "delete.marked", "PATH": "/usr/bin:/bin"},
                            cwd=str(CORE.parent.parent), timeout=60)
    assert result.returncode == -9 and "alive" not in result.stdout

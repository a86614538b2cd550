"""A sandbox for hostile-input tests inside one test's directory:

    <workdir>/sentinel/        files and directories that must never change
    <workdir>/links/           symlinks pointing into the sentinel (the bait)
    <workdir>/area/            where target and staging paths may legitimately go
    <workdir>/pool/            the driver's pool

`fingerprint()` records every entry of the workdir outside the pool and the area (type,
mode, size, mtime, content or link target), so a before/after comparison shows any file
the driver created, changed or removed where it had no business to.
"""

from __future__ import annotations

import hashlib
import os
import stat

from tests.kernel_leaks import mounts_under

SENTINEL_FILES = {
    "passwd": b"root:x:0:0:root:/root:/bin/bash\n",
    "dir/secret.txt": b"do not touch\n",
    "dir/sub/deep.bin": bytes(range(256)) * 16,
}


class Sandbox:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.sentinel = os.path.join(workdir, "sentinel")
        self.links = os.path.join(workdir, "links")
        self.area = os.path.join(workdir, "area")
        self.pool = os.path.join(workdir, "pool")
        for rel, data in SENTINEL_FILES.items():
            path = os.path.join(self.sentinel, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        os.makedirs(os.path.join(self.sentinel, "emptydir"), exist_ok=True)
        os.makedirs(self.links, exist_ok=True)
        os.makedirs(self.area, exist_ok=True)
        # Bait: symlinks that point at the sentinel, from inside and outside the area.
        for name, to in (("dir", "sentinel/dir"), ("emptydir", "sentinel/emptydir"),
                         ("file", "sentinel/passwd"), ("root", "sentinel"),
                         ("dangling", "sentinel/nothing-here")):
            os.symlink(os.path.join(workdir, to), os.path.join(self.links, name))
        os.symlink(os.path.join(workdir, "sentinel/emptydir"), os.path.join(self.area, "ln"))
        os.symlink(self.sentinel, os.path.join(self.area, "lnparent"))

    def fingerprint(self) -> dict[str, tuple[object, ...]]:
        """Every entry under the workdir except the pool, the area's contents and the
        socket, with what it holds."""
        found: dict[str, tuple[object, ...]] = {}
        skip = {self.pool, os.path.join(self.workdir, "csi.sock")}
        for root, dirs, files in os.walk(self.workdir):
            if root == self.area:
                # Only the area's own bait is checked: anything else there is a target.
                entries = ["ln", "lnparent"]
                dirs[:] = []
            else:
                dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
                entries = sorted(dirs + files)
            for name in entries:
                path = os.path.join(root, name)
                if path in skip:
                    continue
                if path == self.area:  # its mtime moves with every target made in it
                    found["area"] = ("dir",)
                    continue
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    what: object = os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as fh:
                        what = hashlib.sha256(fh.read()).hexdigest()
                else:
                    what = None
                found[os.path.relpath(path, self.workdir)] = (
                    stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                    st.st_mtime_ns, what)
        return found

    def foreign_mounts(self) -> list[str]:
        """Mounts under the workdir that are neither in the area nor in the pool (where
        inline volumes are staged): on the sentinel, say, or the bait."""
        allowed = (self.area + "/", self.pool + "/")
        return [m for m in mounts_under(self.workdir) if not m.startswith(allowed)]

    # --- paths for requests --------------------------------------------------------

    def good_paths(self) -> list[str]:
        """Absolute, normalized paths inside the area: targets the driver may use."""
        return [os.path.join(self.area, p) for p in
                ("p0", "p1", "p2", "stage0", "stage1", "pub0", "blockpub", "p0/sub",
                 "missing-parent/target")]

    def hostile_paths(self) -> list[str]:
        """Paths that must be refused: relative, `..`, not normalized, symlinks (or
        under symlinked parents) pointing at the sentinel, control characters."""
        w, a = self.workdir, self.area
        return [
            "", ".", "..", "relative/target", "area/p0", "./p0", "../../etc",
            f"{a}/../sentinel/dir", f"{a}/p0/../../sentinel", f"{a}/..",
            f"{a}//p0", f"{a}/./p0", f"{a}/p0/.",
            f"{w}/links/dir", f"{w}/links/emptydir", f"{w}/links/file", f"{w}/links/root",
            f"{w}/links/dangling", f"{w}/links/root/newdir", f"{w}/links/dir/newdir",
            f"{a}/ln", f"{a}/lnparent/newdir", f"{a}/lnparent/emptydir",
            f"{a}/p0\x00/../../sentinel", f"{a}/p\n0", f"{a}/p\t0",
            "/", "//", "/" + "a/" * 2100,
        ]

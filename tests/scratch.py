"""Files in one test's own temp directory: sparse images, directories, empty files."""

from __future__ import annotations

from pathlib import Path

from tests.lifecycle import MiB


class Scratch:
    """Makes files below `root` (a test's tmp_path), creating parent directories as
    needed. Each call is idempotent except image(), which truncates the file anew."""

    root: Path

    def path(self, name: str) -> str:
        return str(self.root / name)

    def image(self, name: str = "vol.img", size: int = 64 * MiB) -> str:
        """A sparse image file of ``size`` bytes."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        return str(path)

    def dir(self, name: str) -> str:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def file(self, name: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return str(path)

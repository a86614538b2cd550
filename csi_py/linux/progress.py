"""Progress files: a small JSON file a long snapshot copy rewrites as it goes, which
`csi-py snapshot create` polls, so a person watching a large copy sees it move."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

log = logging.getLogger(__name__)


def progress_file_name(name: str) -> str:
    """The progress file of a snapshot being cut, named from the snapshot's name (the
    only thing a client knows before the call returns). A dot file: start-up
    reconciliation removes stale ones. Pure."""
    return ".progress-" + hashlib.sha256(name.encode()).hexdigest()[:24] + ".json"


class ProgressFile:
    """A copy's progress callback that writes {done, total, time} to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, done: int, total: int) -> None:
        """Replace the file atomically. Never raises: progress is a courtesy."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({"done": done, "total": total, "time": time.time()}, fh)
            os.replace(tmp, self.path)
        except OSError:
            log.debug("could not write progress to %s", self.path)

    def remove(self) -> None:
        """Remove the file and its temp file. Idempotent."""
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

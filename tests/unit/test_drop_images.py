"""The suite's own hygiene: images under a test's tmp_path are removed when it ends."""

from __future__ import annotations

import os

from tests.conftest import remove_images


def test_remove_images_takes_big_files_and_keeps_small_ones(tmp_path):
    (tmp_path / "pool" / "volumes").mkdir(parents=True)
    image = tmp_path / "pool" / "volumes" / "vol-1.img"
    with open(image, "wb") as fh:
        fh.truncate(64 << 20)  # sparse, like a thin volume: apparent size counts
    catalog = tmp_path / "pool" / "catalog.db"
    catalog.write_bytes(b"x" * 4096)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.img"
    with open(outside, "wb") as fh:
        fh.truncate(2 << 20)
    os.symlink(outside, tmp_path / "link.img")
    try:
        assert remove_images(str(tmp_path)) == [str(image)]
        assert not image.exists() and catalog.exists()
        assert outside.exists()  # a symlink is not followed out of the tree
    finally:
        outside.unlink()

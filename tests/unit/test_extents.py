"""The pure part of changed-block tracking: how two reflinked files' extent maps split a
range into changed, unchanged and undecided parts (linux/extents.classify)."""

from __future__ import annotations

from csi_py.linux.extents import EXTENT_UNWRITTEN, Extent, classify

K = 4096
DELALLOC = 0x4


def test_shared_extents_are_unchanged_and_moved_ones_changed():
    base = [Extent(0, 1000 * K, 8 * K, 0)]
    # The target shares the first 2 blocks and the last 4; blocks 2-3 were rewritten.
    target = [Extent(0, 1000 * K, 2 * K, 0), Extent(2 * K, 5000 * K, 2 * K, 0),
              Extent(4 * K, 1004 * K, 4 * K, 0)]
    assert classify(base, target, 0, 8 * K) == ([(2 * K, 2 * K)], [])


def test_same_physical_at_another_offset_is_a_change():
    base = [Extent(0, 1000 * K, 4 * K, 0)]
    target = [Extent(0, 1001 * K, 4 * K, 0)]  # shifted by one block: other data
    assert classify(base, target, 0, 4 * K) == ([(0, 4 * K)], [])


def test_holes_and_unwritten_extents_both_read_as_zeros():
    base = [Extent(4 * K, 2000 * K, 4 * K, EXTENT_UNWRITTEN)]
    target: list[Extent] = []  # all hole
    assert classify(base, target, 0, 16 * K) == ([], [])
    written = [Extent(4 * K, 2000 * K, 4 * K, 0)]  # the same blocks, now with data
    assert classify(base, written, 0, 16 * K) == ([(4 * K, 4 * K)], [])


def test_data_appearing_or_vanishing_is_a_change():
    assert classify([], [Extent(8 * K, 7 * K, K, 0)], 0, 16 * K) == ([(8 * K, K)], [])
    assert classify([Extent(8 * K, 7 * K, K, 0)], [], 0, 16 * K) == ([(8 * K, K)], [])


def test_opaque_extents_are_undecided():
    base = [Extent(0, 0, 4 * K, DELALLOC)]
    target = [Extent(0, 3000 * K, 4 * K, 0)]
    assert classify(base, target, 0, 4 * K) == ([], [(0, 4 * K)])


def test_starting_offset_clips_and_adjacent_changes_merge():
    base = [Extent(0, 100 * K, 8 * K, 0)]
    target = [Extent(0, 900 * K, 4 * K, 0), Extent(4 * K, 950 * K, 4 * K, 0)]
    assert classify(base, target, 0, 8 * K) == ([(0, 8 * K)], [])
    assert classify(base, target, 3 * K, 8 * K) == ([(3 * K, 5 * K)], [])
    # A target longer than the base: the tail past the base's end reads as zeros there.
    assert classify(base, [*target, Extent(8 * K, 960 * K, K, 0)], 6 * K, 9 * K) == \
        ([(6 * K, 3 * K)], [])

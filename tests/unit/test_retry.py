"""domain/retry.tries: how many tries a bounded retry makes and the pauses between."""

from __future__ import annotations

import pytest

from csi_py.domain import retry


@pytest.fixture
def clock(monkeypatch):
    """A fake clock: sleep() advances it and records each pause."""
    state = {"now": 100.0, "pauses": []}

    def sleep(seconds):
        state["pauses"].append(seconds)
        state["now"] += seconds

    monkeypatch.setattr(retry.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(retry.time, "sleep", sleep)
    return state


def test_pauses_double_up_to_the_longest_until_the_time_is_up(clock):
    made = list(retry.tries(1.0, 0.1, 0.3))
    assert clock["pauses"] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    # The tries at 0, 0.1, 0.3, 0.6, 0.9 and 1.2 s: the last one after the deadline.
    assert made == [0, 1, 2, 3, 4, 5]


def test_a_try_that_works_ends_the_loop_without_a_pause(clock):
    for number in retry.tries(5.0, 0.1, 1.0):
        if number == 2:
            break
    assert clock["pauses"] == pytest.approx([0.1, 0.2])


def test_no_time_at_all_still_makes_one_try(clock):
    assert list(retry.tries(0.0, 0.1, 1.0)) == [0]
    assert clock["pauses"] == []

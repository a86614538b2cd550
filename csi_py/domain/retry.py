"""Bounded retries: the pauses between the tries of something that may pass on its own
(a device still closing, a mount a process lets go of in a moment)."""

from __future__ import annotations

import time
from collections.abc import Iterator


def tries(within: float, first_pause: float, longest_pause: float) -> Iterator[int]:
    """Yield the try number (0, 1, ...): the first at once, each next one after a pause
    that doubles from ``first_pause`` up to ``longest_pause``, as long as ``within``
    seconds have not passed since the first. The caller leaves the loop when a try
    works; when the loop ends by itself, the time is up: at least one try was made,
    and the last one ended at or after the deadline (a pause may carry the last try
    up to ``longest_pause`` past it). Raises nothing."""
    deadline = time.monotonic() + within
    pause = first_pause
    number = 0
    while True:
        yield number
        if time.monotonic() >= deadline:
            return
        time.sleep(pause)
        pause = min(pause * 2, longest_pause)
        number += 1

"""Paging shared by the list RPCs: page sizes, and tokens that are the seq of the last
entry returned, so deletions between pages never make entries repeat or vanish."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from csi_py.domain.errors import Aborted, InvalidArgument

MAX_PAGE = 1000
# Only the exact form we issue: a positive decimal seq.
TOKEN = re.compile(r"[1-9][0-9]{0,18}")


class Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=Sequenced)


def page_limit(max_entries: int) -> int:
    """How many entries a page holds for a request's max_entries (0: as many as we
    allow). Pure; raises InvalidArgument when it is negative."""
    if max_entries < 0:
        raise InvalidArgument("max_entries must not be negative")
    return min(max_entries or MAX_PAGE, MAX_PAGE)


def after_token(starting_token: str, highest_issued: Callable[[], int]) -> int:
    """The seq a page starts after: 0 for no token. Raises Aborted for a token this
    driver never issued (the spec's answer; the CO lists again from the start)."""
    if not starting_token:
        return 0
    if not TOKEN.fullmatch(starting_token) or int(starting_token) > highest_issued():
        raise Aborted(f"starting_token {starting_token!r} is not one this driver issued;"
                      " list again from the start")
    return int(starting_token)


def cut(rows: Sequence[T], limit: int) -> tuple[Sequence[T], str]:
    """`rows` fetched with limit + 1 entries, cut to the page and its next token ("" on
    the last page). Pure."""
    page = rows[:limit]
    return page, str(page[-1].seq) if len(rows) > limit and page else ""

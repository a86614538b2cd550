"""Findings: what a start-up pass or a pool check found and did, as lines grouped by
kind, for an operator's log and for tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Generic, TypeVar

K = TypeVar("K", bound=str)


class Findings(Generic[K]):
    """Lines grouped under a fixed set of kinds.

    A subclass declares its kinds once, as a `Literal` of their names; it passes that
    Literal as the type argument (so mypy rejects a misspelt kind at a call site) and
    sets `KINDS = typing.get_args(it)` (the same names at run time, in the order that
    counts and lines follow). An unknown kind raises KeyError at run time as well.
    """

    KINDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._found: dict[str, list[str]] = {kind: [] for kind in self.KINDS}

    def add(self, kind: K, item: str) -> None:
        """Record one finding. Raises KeyError for a kind this report does not have."""
        self._found[kind].append(item)

    def extend(self, kind: K, items: Iterable[str]) -> None:
        """Record several findings of one kind. Raises KeyError as add does."""
        self._found[kind].extend(items)

    def __getitem__(self, kind: K) -> list[str]:
        """The findings of one kind, oldest first (a copy). Raises KeyError as add does."""
        return list(self._found[kind])

    def counts(self) -> dict[str, int]:
        """How many findings of each kind, every kind included. Pure."""
        return {kind: len(items) for kind, items in self._found.items()}

    def lines(self) -> list[str]:
        """One line per finding, `kind: item`, for an operator. Pure."""
        return [f"{kind}: {item}" for kind, items in self._found.items() for item in items]

    def _nonempty(self) -> dict[str, list[str]]:
        return {kind: items for kind, items in self._found.items() if items}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._nonempty()})"

"""Releasing results in collection order, whatever order workers finish them in.

When the session may stop at a failure (``-x``, ``--sw``), plain pytest shows
exactly the tests before its stopping point, in collection order; the replay
(:mod:`pytest_psyduck.replay`) therefore takes results from an :class:`InOrder`,
which releases each only once every test before it has been released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    """Holds values that arrive by key until their turn in *order* comes."""

    def __init__(self, order: Sequence[str]) -> None:
        self._order = order
        self._next = 0
        self._arrived: dict[str, T] = {}

    def arrive(self, key: str, value: T) -> None:
        self._arrived[key] = value

    def pop(self, wait: bool) -> tuple[str, T] | None:
        """The next value in order, or None when there is none to give now.

        With *wait*, a key whose value has not arrived stops the release; without
        (no more will arrive), it is passed over.
        """
        while self._next < len(self._order):
            key = self._order[self._next]
            if key not in self._arrived and wait:
                return None
            self._next += 1
            if key in self._arrived:
                return key, self._arrived.pop(key)
        return None

    def drop(self) -> None:
        """Forget everything held: the session stopped before reaching it."""
        self._arrived.clear()
        self._next = len(self._order)

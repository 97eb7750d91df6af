"""One run's queued units, indexed by placement key, with running totals.

An idle slot asks "the first unit in dispatch order that this slot may run";
with units kept per placement key (profile, labels, resources) in dispatch
order, that is the best head among the few keys the slot fits, not a scan of
the queue.  Work requeued to avoid the host that lost it waits apart (it is
rare), so the heads stay valid whatever host asks.  The queued estimate and
test count are running totals: a decision never sums the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from farm.scheduling.policies import PlacementKey, Unit


@dataclass
class KeyQueue:
    """Units of one placement key: ``ready`` in dispatch order, and requeued ``avoiding`` ones."""

    ready: deque[Unit] = field(default_factory=deque)
    avoiding: list[Unit] = field(default_factory=list)
    #: Tests queued here: at most this many shards will come of them.
    tests: int = 0

    def __len__(self) -> int:
        return len(self.ready) + len(self.avoiding)

    def head(self, host: str, elsewhere: Callable[[], bool]) -> Unit | None:
        """The first unit *host* may take: one avoiding *host* only if no other host fits."""
        best = self.ready[0] if self.ready else None
        for unit in self.avoiding:
            if best is not None and unit.priority >= best.priority:
                continue
            if unit.avoid_host != host or not elsewhere():
                best = unit
        return best

    def remove(self, unit: Unit) -> None:
        if self.ready and self.ready[0] is unit:
            self.ready.popleft()
        else:
            self.avoiding.remove(unit)

    def units(self) -> Iterator[Unit]:
        yield from self.ready
        yield from self.avoiding


@dataclass
class RunQueue:
    """Everything one run still has to dispatch."""

    keys: dict[PlacementKey, KeyQueue] = field(default_factory=dict)
    #: Estimated microseconds of work queued, and tests queued.
    size: int = 0
    tests: int = 0
    #: Units holding a ``first`` test queued: while there are any, they go first.
    firsts: int = 0

    def append(self, unit: Unit) -> None:
        """Queue *unit* behind everything of lower priority (plan order)."""
        self._queue(unit.key).ready.append(unit)
        self._count(unit, 1)

    def push_front(self, unit: Unit) -> None:
        """Queue requeued *unit* (its priority is lower than any queued) in front."""
        queue = self._queue(unit.key)
        if unit.avoid_host is None:
            queue.ready.appendleft(unit)
        else:
            queue.avoiding.append(unit)
        self._count(unit, 1)

    def remove(self, unit: Unit) -> None:
        queue = self.keys[unit.key]
        queue.remove(unit)
        self._count(unit, -1)
        if not queue:
            del self.keys[unit.key]

    def shrink(self, unit: Unit, count: int, size: int) -> None:
        """The first *count* tests (*size* microseconds) of queued *unit* were dispatched."""
        unit.start += count
        unit.size -= size
        self.size -= size
        self.tests -= count
        self.keys[unit.key].tests -= count

    def drop(self, key: PlacementKey) -> list[Unit]:
        """Remove and return every unit of *key*."""
        queue = self.keys.pop(key, None)
        units = [] if queue is None else list(queue.units())
        self.size -= sum(u.size for u in units)
        self.tests -= sum(len(u) for u in units)
        self.firsts -= sum(u.first for u in units)
        return units

    def clear(self) -> None:
        self.keys.clear()
        self.size = self.tests = self.firsts = 0

    def _queue(self, key: PlacementKey) -> KeyQueue:
        queue = self.keys.get(key)
        if queue is None:
            queue = self.keys[key] = KeyQueue()
        return queue

    def _count(self, unit: Unit, sign: int) -> None:
        self.size += sign * unit.size
        self.tests += sign * len(unit)
        self.firsts += sign * unit.first
        self.keys[unit.key].tests += sign * len(unit)

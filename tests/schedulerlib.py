"""A discrete-event farm for the scheduler's property tests: no I/O, the coordinator's part.

What a host holds is worked out here from each shard's tests, not read from the
scheduler, so a scheduler that oversubscribed a host would fail the assertion in
:meth:`Farm.offer`.  Shared by the capacity and the pinned-group tests.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from typing import Any

from hypothesis import strategies as st

from farm.scheduler import Capacity, Scheduler, Shard


def need(shard_tests, capacity: Capacity, slots: int) -> tuple[float, int]:
    cpus = max((t.cpus or capacity.cpus / slots) for t in shard_tests)
    memory = max((t.memory or capacity.memory // slots) for t in shard_tests)
    return min(cpus, capacity.cpus), min(memory, capacity.memory)


class Farm:
    """Hosts of *slots* slots and *capacity* each, running whatever the scheduler hands out."""

    def __init__(self, scheduler: Scheduler, hosts: int, slots: int, capacity: Capacity) -> None:
        self.scheduler, self.capacity, self.slots = scheduler, capacity, slots
        self.clock = 0.0
        self.events: list[tuple[float, int, str]] = []
        self.seq = itertools.count()
        self.running: dict[str, tuple[Shard, tuple[float, int]]] = {}
        self.used: dict[str, list[float]] = {}
        self.idle: set[str] = set()
        self.log: list[tuple[str, str, str, float]] = []  # slot, run, test, start
        self.held: dict[str, int] = {}
        self.shards: list[tuple[Shard, bool]] = []  # in dispatch order; True: lost
        for h in range(hosts):
            for s in range(slots):
                scheduler.add_slot(f"h{h}/{s}", f"h{h}", {}, capacity)
                self.idle.add(f"h{h}/{s}")
            self.used[f"h{h}"] = [0.0, 0]

    def offer(self, slot: str, fairness: bool = False) -> None:
        host = slot.split("/")[0]
        queued = {r: self.scheduler.queued(r) for r in self.scheduler.runs()}
        shard = self.scheduler.next_shard(slot)
        if shard is None:
            self.scheduler.release(slot)
            self.idle.add(slot)
            return
        self.idle.discard(slot)
        if fairness:
            # An idle slot goes to the run holding the fewest slots among those with work.
            others = [r for r, n in queued.items() if n and r != shard.run]
            assert all(self.held.get(r, 0) >= self.held.get(shard.run, 0) for r in others)
        self.held[shard.run] = self.held.get(shard.run, 0) + 1
        taken = need(shard.tests, self.capacity, self.slots)
        used = self.used[host]
        used[0] += taken[0]
        used[1] += taken[1]
        assert used[0] <= self.capacity.cpus + 1e-9 and used[1] <= self.capacity.memory
        self.running[slot] = (shard, taken)
        self.shards.append((shard, False))
        start = self.clock
        for test in shard.tests:
            self.log.append((slot, shard.run, test.id, start))
            start += test.estimate
        heapq.heappush(self.events, (start, next(self.seq), slot))

    def finish(self, slot: str, only: int | None = None) -> None:
        """The slot's shard ended; with *only*, its host was lost after that many tests."""
        shard, taken = self.running.pop(slot)
        self.held[shard.run] -= 1
        used = self.used[slot.split("/")[0]]
        used[0] -= taken[0]
        used[1] -= taken[1]
        for test in shard.tests[:only]:
            self.scheduler.finished(shard.run, test.id)
        if only is not None:
            self.events = [e for e in self.events if e[2] != slot]
            heapq.heapify(self.events)
            index = next(i for i, (s, _) in enumerate(self.shards) if s is shard)
            self.shards[index] = (shard, True)

    def wake(self, fairness: bool = False) -> None:
        for slot in sorted(self.idle):
            self.offer(slot, fairness)
        while grown := self.scheduler.hosts_with_room():
            for slot in sorted(s for s in self.idle if s.split("/")[0] in grown):
                self.offer(slot, fairness)

    def step(self, fairness: bool = False) -> bool:
        if not self.events:
            return False
        self.clock, _, slot = heapq.heappop(self.events)
        self.finish(slot)
        self.offer(slot, fairness)
        self.wake(fairness)
        return True


def lose_host(scheduler: Scheduler, farm: Farm, host: str, data: Any) -> collections.Counter:
    """Lose *host* as the coordinator does; the (run, test) pairs that will run again.

    What its slots had not finished goes back (the running test as a retry, elsewhere if
    possible), after a drawn number of each shard's tests finished; then its slots go.
    """
    rerun: collections.Counter[tuple[str, str]] = collections.Counter()
    for slot in sorted(s for s in farm.running if s.startswith(f"{host}/")):
        shard, _ = farm.running[slot]
        done = data.draw(st.integers(0, len(shard.tests)))
        farm.finish(slot, only=done)
        rest = list(shard.tests[done:])
        rerun.update((shard.run, t.id) for t in rest)
        if rest:
            assert scheduler.requeue(shard.run, rest[1:], interrupted=rest[0], lost_host=host)
    for s in range(farm.slots):
        scheduler.remove_slot(f"{host}/{s}")
        farm.idle.discard(f"{host}/{s}")
    return rerun


def two_runs_losing_a_host(
    scheduler: Scheduler, farm: Farm, tests: dict[str, list], data: Any, steps: int
) -> collections.Counter:
    """Run "big", let up to *steps* shards end, add "small", lose h0, play to the end.

    Returns the (run, test) pairs the lost host's work makes run again.
    """
    assert scheduler.add_run("big", tests["big"]) == []
    farm.wake()
    for _ in range(data.draw(st.integers(0, steps))):
        farm.step()
    assert scheduler.add_run("small", tests["small"]) == []
    farm.wake()
    rerun = lose_host(scheduler, farm, "h0", data)
    farm.wake()
    while farm.step():
        pass
    return rerun

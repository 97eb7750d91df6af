"""The same workload under other tools' policies, for comparison with the farm's scheduler.

Each baseline is a model of the tool's distribution rule on the same slots,
all tests known from the start (an advantage: the farm's small run arrives
mid-way), with true durations and no per-shard cost:

* ``xdist-load`` — pytest-xdist ``--dist load``: a quarter of the tests dealt
  round-robin one by one, then chunks of half a slot's share of what is left
  to each slot that runs dry;
* ``xdist-loadfile`` — ``--dist loadfile``: whole files, in order, to idle slots;
* ``pytest-split`` — static groups by estimated duration, longest first onto
  the least-loaded slot (untimed tests count as the mean of the timed ones).

None knows about CPUs or memory: a slot runs whatever it is given, so heavy
tests may share a host beyond its capacity, which is counted.  A test asking
for more CPUs than a slot's share gets only that share of a busy host, so it
takes proportionally longer (its CPU-seconds are the same); memory beyond a
host's is counted, not modelled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from farm.manifest import TestSpec
from farm.simulation.workload import Options, Suite, need


class _Timeline:
    """Slots running tests back to back; heavy tests' intervals kept to check capacity."""

    def __init__(self, options: Options, durations: dict[str, float]) -> None:
        self.options = options
        self.durations = durations
        self.end = [0.0] * (options.hosts * options.slots)
        self.heavy: list[tuple[int, float, float, float, int]] = []

    def run(self, slot: int, tests: list[TestSpec]) -> float:
        end = self.end[slot]
        share = self.options.cpus / self.options.slots
        for test in tests:
            seconds = self.durations[test.id] * max(1.0, (test.cpus or share) / share)
            if test.cpus or test.memory:
                cpus, memory = need(test, self.options)
                self.heavy.append((slot // self.options.slots, end, end + seconds, cpus, memory))
            end += seconds
        self.end[slot] = end
        return end

    def oversubscribed(self) -> float:
        """Host-seconds with more CPUs or memory in use than the host has.

        Slots run back to back from time 0, so a slot is busy until its end;
        busy slots use a slot's share each, heavy tests their hints instead.
        """
        options = self.options
        share = (options.cpus / options.slots, options.memory // options.slots)
        events: dict[int, list[tuple[float, int, float, int]]] = {}
        for slot, end in enumerate(self.end):
            events.setdefault(slot // options.slots, []).append((end, -1, 0.0, 0))
        for host, start, end, cpus, memory in self.heavy:
            extra = (cpus - share[0], memory - share[1])
            events.setdefault(host, []).append((start, 0, extra[0], extra[1]))
            events.setdefault(host, []).append((end, 0, -extra[0], -extra[1]))
        total = 0.0
        for host_events in events.values():
            busy, cpus, memory, last = options.slots, 0.0, 0, 0.0
            for when, slots, d_cpus, d_memory in sorted(host_events):
                used = (busy * share[0] + cpus, busy * share[1] + memory)
                if used[0] > options.cpus + 1e-6 or used[1] > options.memory:
                    total += when - last
                busy, cpus, memory, last = busy + slots, cpus + d_cpus, memory + d_memory, when
        return total


def xdist_load(tests: list[TestSpec], line: _Timeline) -> None:
    slots = len(line.end)
    initial = min(len(tests), max(len(tests) // 4, 2 * slots))
    for index, test in enumerate(tests[:initial]):
        line.run(index % slots, [test])
    pending = initial
    free = [(end, slot) for slot, end in enumerate(line.end)]
    heapq.heapify(free)
    while pending < len(tests):
        _, slot = heapq.heappop(free)
        chunk = max(1, (len(tests) - pending) // (2 * slots))
        heapq.heappush(free, (line.run(slot, tests[pending : pending + chunk]), slot))
        pending += chunk


def xdist_loadfile(tests: list[TestSpec], line: _Timeline) -> None:
    free = [(0.0, slot) for slot in range(len(line.end))]
    for _, group in itertools.groupby(tests, key=lambda t: t.group):
        _, slot = heapq.heappop(free)
        heapq.heappush(free, (line.run(slot, list(group)), slot))


def pytest_split(tests: list[TestSpec], line: _Timeline) -> None:
    known = [t.estimate for t in tests if t.estimate > 0]
    mean = sum(known) / len(known) if known else 1.0
    groups: list[list[TestSpec]] = [[] for _ in line.end]
    load = [(0.0, slot) for slot in range(len(line.end))]
    for test in sorted(tests, key=lambda t: -(t.estimate or mean)):
        estimated, slot = heapq.heappop(load)
        groups[slot].append(test)
        heapq.heappush(load, (estimated + (test.estimate or mean), slot))
    for slot, group in enumerate(groups):
        line.run(slot, group)


BASELINES: dict[str, Callable[[list[TestSpec], _Timeline], None]] = {
    "xdist-load": xdist_load,
    "xdist-loadfile": xdist_loadfile,
    "pytest-split": pytest_split,
}


def run_baselines(options: Options, suites: list[Suite]) -> dict[str, dict[str, float]]:
    """Makespan and oversubscribed host-seconds of each baseline on all of *suites*' tests."""
    tests = [t for suite in suites for t in suite.tests]
    durations = {k: v for suite in suites for k, v in suite.durations.items()}
    results = {}
    for name, policy in BASELINES.items():
        line = _Timeline(options, durations)
        policy(tests, line)
        results[name] = {
            "makespan_s": max(line.end),
            "oversubscribed_host_seconds": line.oversubscribed(),
        }
    return results

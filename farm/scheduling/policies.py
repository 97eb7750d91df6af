"""How one run's tests become *units* (future shards), in the order they are dispatched.

Planning touches every test, so the coordinator does it in a thread; nothing
here knows about slots beyond their number.  Durations are counted in whole
microseconds: summing a million float estimates drifts, and a drift of one
ulp cut one-second shards of 0.01 s tests at 99 tests instead of 100.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from farm.manifest import TestSpec

#: Estimate for a test nobody has timed yet, when no test of its run has history either.
DEFAULT_ESTIMATE = 0.01
#: Groups shorter than this are never split: their fixtures cost more than the balance gains.
SPLIT_FLOOR = 0.1
#: A unit lasts at most about this long (unless hosts ask for longer shards): slots
#: must come free often enough that a run arriving later gets its share quickly.
MAX_UNIT_SECONDS = 10.0
#: Seconds a worker spends on each test beyond the test's own (measured) time: sending its
#: result and taking the next.  Only units packed one per slot weigh it (:func:`packed`).
REPORT_COST = 0.001

#: Where a test may run and with whom it may share a shard: its worker profile,
#: host label requirements, and the CPUs and memory it asks for (None: a slot's share).
PlacementKey = tuple[str, tuple[tuple[str, str], ...], float | None, int | None]


def micros(seconds: float) -> int:
    """*seconds* in whole microseconds, so that sums are exact."""
    return round(seconds * 1_000_000)


def placement_key(test: TestSpec) -> PlacementKey:
    """Tests may share a shard only if they need the same profile, labels and resources."""
    return (
        test.profile,
        tuple(sorted(test.requires.items())),
        test.cpus or None,
        test.memory or None,
    )


@dataclass(eq=False)
class Unit:
    """A future shard: ``tests[start:]``, whose estimates sum to ``size`` microseconds."""

    tests: list[TestSpec]
    key: PlacementKey
    #: Dispatch order within its run: lower first (requeued work gets negative numbers).
    priority: int = 0
    retry: bool = False
    avoid_host: str | None = None
    #: A pinned group's tests (see ``TestSpec.pinned``): dispatched whole, never split.
    pinned: bool = False
    #: Made of tests nobody has timed: its size is a guess, so it is not held to the
    #: hosts' minimum shard length (every slot should get some of them early).
    guessed: bool = False
    start: int = 0
    size: int = field(init=False)
    #: Holds a ``first`` test (``--ff``'s previous failures): dispatched before the
    #: run's other units wherever it can run.
    first: bool = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(micros(t.estimate) for t in self.tests)
        self.first = any(t.first for t in self.tests)

    def __len__(self) -> int:
        return len(self.tests) - self.start

    def head(self, limit: int) -> tuple[int, int]:
        """How many leading tests fit in *limit* microseconds (at least one), and their size."""
        count = size = 0
        for test in itertools.islice(self.tests, self.start, None):
            cost = micros(test.estimate)
            if count and size + cost > limit:
                break
            count += 1
            size += cost
        return count, size


@dataclass(frozen=True)
class RunPlan:
    """A run's queue worked out from its tests alone, by :func:`plan_run`.

    Planning touches every test; for a run of a million tests it takes seconds,
    so the coordinator plans in a thread and only :meth:`Scheduler.install`,
    which touches each distinct placement once, runs on its event loop.
    """

    tests: Sequence[TestSpec]  # as submitted, in manifest order
    units: list[Unit]
    keys: frozenset[PlacementKey]


class ShardingPolicy(Protocol):
    """Splits one run's tests into units, first-to-dispatch first."""

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        """Return lists of tests; every test appears in exactly one list, in manifest order."""
        ...


def split(group: Sequence[TestSpec], target: int) -> list[list[TestSpec]]:
    """Cut *group* into contiguous pieces of about *target* microseconds each."""
    pieces: list[list[TestSpec]] = [[]]
    acc = 0
    for test in group:
        cost = micros(test.estimate)
        if pieces[-1] and acc + cost > target:
            pieces.append([])
            acc = 0
        pieces[-1].append(test)
        acc += cost
    return pieces


def _groups(tests: Sequence[TestSpec]) -> list[list[TestSpec]]:
    return [list(g) for _, g in itertools.groupby(tests, key=lambda t: (t.group, placement_key(t)))]


def packed(
    groups: list[list[TestSpec]], slots: int, target: int, floor: int
) -> list[list[TestSpec]]:
    """*groups* in at most *slots* units of about equal length, longest first: a run the
    hosts' minimum shard cuts into one unit per slot ends when its largest unit does.

    Groups of *floor* or more are split into pieces of *target*, each a unit; the
    other groups go, longest first, to the unit holding least (longest processing
    time first).  A test's length here adds :data:`REPORT_COST` to its estimate: a
    unit of many millisecond tests outlasts one of fewer, longer tests of the same
    estimate.  Each unit keeps its tests in collection order.
    """
    units: list[list[TestSpec]] = []
    small: list[list[TestSpec]] = []
    for group in groups:
        if sum(micros(t.estimate) for t in group) >= floor:
            units.extend(split(group, target))
        else:
            small.append(group)
    units.extend([] for _ in range(max(slots - len(units), 0)))

    def length(tests: list[TestSpec]) -> int:
        return sum(micros(t.estimate + REPORT_COST) for t in tests)

    sizes = [length(unit) for unit in units]
    for group in sorted(small, key=lambda g: -length(g)):
        least = min(range(len(units)), key=sizes.__getitem__)
        units[least].extend(group)
        sizes[least] += length(group)
    position = {id(test): index for index, test in enumerate(t for g in groups for t in g)}
    for unit in units:
        unit.sort(key=lambda test: position[id(test)])
    return [unit for _, unit in sorted(zip(sizes, units, strict=True), key=lambda p: -p[0]) if unit]


class LongestFirst:
    """Group-preserving longest-processing-time-first sharding.

    A unit is a contiguous run of tests of one group (or of several small
    groups merged, when a shard has a fixed cost worth amortizing).  The target
    unit size is a quarter of a slot's fair share of the work (at most
    :data:`MAX_UNIT_SECONDS`): large enough that a module's fixtures are set up
    few times, small enough that the tail of the run balances.  Units are sorted
    longest first; the pieces of a split group keep their order, so one worker
    never runs a module backwards.
    """

    name = "longest-first"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        total = sum(micros(t.estimate) for t in tests)
        quarter = min(total // (max(slots, 1) * 4), micros(MAX_UNIT_SECONDS))
        target = max(micros(min_seconds), quarter)
        floor = max(target, micros(SPLIT_FLOOR))
        # (Each test's estimate is rounded to micros: their sum may exceed the share's.)
        one_per_slot = target * max(slots, 1) >= total - len(tests)
        if one_per_slot and len({placement_key(t) for t in tests}) == 1:
            return packed(_groups(tests), slots, target, floor)
        units: list[list[TestSpec]] = []
        merging: dict[PlacementKey, tuple[list[TestSpec], int]] = {}
        for group in _groups(tests):
            size = sum(micros(t.estimate) for t in group)
            if size >= floor:
                units.extend(split(group, target))
                continue
            key = placement_key(group[0])
            bucket, acc = merging.get(key, ([], 0))
            if acc and acc + size - target > target - acc:
                # Closer to the target without this group than with it: a run cut into
                # about one unit per slot (its shards held to the hosts' minimum) ends
                # when its largest unit does, so no unit overshoots by more than it lacks.
                units.append(bucket)
                bucket, acc = [], 0
            bucket.extend(group)
            if acc + size >= target:
                units.append(bucket)
                merging.pop(key, None)
            else:
                merging[key] = (bucket, acc + size)
        units.extend(bucket for bucket, _ in merging.values())
        # Longest first, but the pieces of one split group stay in collection
        # order: they rank by the group's largest piece and keep their sequence.
        largest: dict[str, int] = {}
        for unit in units:
            size = sum(micros(t.estimate) for t in unit)
            largest[unit[0].group] = max(largest.get(unit[0].group, 0), size)
        units.sort(key=lambda unit: -largest[unit[0].group])
        return units


class PerGroup:
    """One unit per group (module), like pytest-xdist's ``--dist loadscope``."""

    name = "per-group"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        return _groups(tests)


class PerTest:
    """One unit per test in manifest order, like pytest-xdist's ``--dist load`` at its finest."""

    name = "per-test"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        return [[t] for t in tests]


def plan_run(
    tests: Sequence[TestSpec], policy: ShardingPolicy, slots: int, min_seconds: float
) -> RunPlan:
    """Cut *tests* into the units *policy* makes of them for a farm of *slots* slots.

    Dispatch order: units holding a ``first`` test (``--ff``'s failures), then
    pinned groups (each one unit, in manifest order, wherever its tests sit),
    then the policy's order, except that tests nobody has timed go right behind
    the timed units longer than half the run's expected length.  Untimed tests go
    early because their length is a guess: one of them may last hours, and it
    must not start last.  They get the median estimate of the timed tests and a
    unit each (so a module's new tests may run apart from, and before, its timed
    ones); when no test is timed, the policy's units, small enough (whatever
    the hosts' minimum shard) that every slot gets some.
    """
    timed_estimates = [t.estimate for t in tests if t.estimate > 0]
    guess = statistics.median(timed_estimates) if timed_estimates else DEFAULT_ESTIMATE
    guessed_groups = {t.group for t in tests if t.estimate <= 0}
    filled = [t if t.estimate > 0 else _with_estimate(t, guess) for t in tests]
    untimed_ids = {t.id for t in tests if t.estimate <= 0}
    pinned: dict[tuple[str, PlacementKey], list[TestSpec]] = {}
    for test in filled:
        if test.pinned:
            pinned.setdefault((test.group, placement_key(test)), []).append(test)
    pinned_units = sorted(
        (
            Unit(g, placement_key(g[0]), pinned=True, guessed=g[0].group in guessed_groups)
            for g in pinned.values()
        ),
        key=lambda u: -u.size,
    )
    units = [u for u in pinned_units if any(t.first for t in u.tests)]
    free_first = [t for t in filled if t.first and not t.pinned]
    units.extend(_units(policy, free_first, slots, min_seconds, guessed=False))
    units.extend(u for u in pinned_units if not any(t.first for t in u.tests))
    rest = [t for t in filled if not t.first and not t.pinned]
    untimed = [t for t in rest if t.id in untimed_ids]
    timed = [t for t in rest if t.id not in untimed_ids] if untimed else rest
    # The hosts' minimum shard coarsens a run's shards, but never below one per slot:
    # a suite shorter than the slots times the minimum would otherwise leave slots idle.
    timed_share = sum(t.estimate for t in timed) / max(slots, 1)
    known = _units(policy, timed, slots, min(min_seconds, timed_share), guessed=False)
    # Untimed units go behind the timed units that must start at once for the run to
    # end near its bound (longer than half of it), before the rest, which can wait.
    # A unit ranks by its group's largest unit (the pieces of a split group keep their
    # order, ranked together): a group holding an hours-long test goes before them whole.
    bound = max(max(timed_estimates, default=0.0), sum(timed_estimates) / max(slots, 1))
    largest: dict[str, int] = {}
    for unit in known:
        largest[unit.tests[0].group] = max(largest.get(unit.tests[0].group, 0), unit.size)
    cut = next(
        (i for i, u in enumerate(known) if largest[u.tests[0].group] < micros(bound / 2)),
        len(known),
    )
    units.extend(known[:cut])
    if untimed and timed_estimates:
        # Beside timed tests, an untimed one may last longer than all of them: a unit of
        # several (a slow test's variants, say) would multiply that, so each goes alone.
        units.extend(Unit([t], placement_key(t), guessed=True) for t in untimed)
    elif untimed:
        share = sum(t.estimate for t in untimed) / max(slots, 1)
        units.extend(_units(policy, untimed, slots, min(min_seconds, share), guessed=True))
    units.extend(known[cut:])
    for priority, unit in enumerate(units):
        unit.priority = priority
    return RunPlan(tests, units, frozenset(u.key for u in units))


def _units(
    policy: ShardingPolicy, tests: list[TestSpec], slots: int, min_seconds: float, *, guessed: bool
) -> list[Unit]:
    if not tests:
        return []
    return [
        Unit(u, placement_key(u[0]), guessed=guessed)
        for u in policy.units(tests, slots, min_seconds)
        if u
    ]


def _with_estimate(test: TestSpec, estimate: float) -> TestSpec:
    return dataclasses.replace(test, estimate=estimate)

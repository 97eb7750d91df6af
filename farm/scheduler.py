"""The farm's scheduler: a pure data structure deciding which tests run where.

No asyncio and no I/O live here, so the coordinator drives it from its event
loop and a simulation (or a hypothesis state machine) can drive it just the
same.  The coordinator tells it about slots (one place where one worker runs at
a time), runs, finished tests and lost work; it answers "what should this idle
slot run next?".

Two decisions are separate and swappable:

* a :class:`ShardingPolicy` turns one run's tests into *units* (future shards)
  ordered by dispatch priority — the default, :class:`LongestFirst`, keeps each
  group (a test module) together unless splitting it pays, and hands out the
  longest units first so the run ends close to ``max(longest, total / slots)``;
* the fairness rule across runs, in :meth:`Scheduler.next_shard`: an idle slot
  goes to the run holding the fewest slots, so one huge run cannot starve a
  small one.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from farm.manifest import TestSpec

#: Estimate for a test nobody has timed yet, when no test of its run has history either.
DEFAULT_ESTIMATE = 0.01
#: Groups shorter than this are never split: their fixtures cost more than the balance gains.
SPLIT_FLOOR = 0.1
#: Shards shrink towards a run's end, but not below this: a shard costs a round
#: trip to its worker, and the last slots need only finish within about this much.
TAIL_FLOOR = 0.01


@dataclass(frozen=True)
class Shard:
    """Tests of one run sent together to one slot, in the order they must run."""

    id: int
    run: str
    tests: tuple[TestSpec, ...]
    retry: bool = False

    @property
    def profile(self) -> str:
        return self.tests[0].profile


@dataclass
class _Unit:
    tests: list[TestSpec]
    requires: Mapping[str, str]
    retry: bool = False
    avoid_host: str | None = None
    #: A pinned group's tests (see ``TestSpec.pinned``): dispatched whole, never split.
    pinned: bool = False
    #: Sum of the tests' estimates, kept with them: a huge run's queue is summed on every shard.
    estimate: float = field(init=False)

    def __post_init__(self) -> None:
        self.estimate = sum(t.estimate for t in self.tests)

    def drop_head(self, count: int) -> None:
        """Remove the first *count* tests (dispatched on their own)."""
        self.tests = self.tests[count:]
        self.estimate = sum(t.estimate for t in self.tests)


@dataclass(frozen=True)
class RunPlan:
    """A run's queue worked out from its tests alone, by :func:`plan_run`.

    Planning touches every test; for a run of a million tests it takes seconds,
    so the coordinator plans in a thread and only :meth:`Scheduler.install`,
    which touches each distinct placement once, runs on its event loop.
    """

    tests: Sequence[TestSpec]  # as submitted, in manifest order
    units: list[_Unit]
    placements: frozenset[tuple[tuple[str, str], ...]]


class ShardingPolicy(Protocol):
    """Splits one run's tests into units, first-to-dispatch first."""

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        """Return lists of tests; every test appears in exactly one list, in manifest order."""
        ...


def _placement_key(test: TestSpec) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Tests may share a shard only if they need the same worker profile and host labels."""
    return test.profile, tuple(sorted(test.requires.items()))


class LongestFirst:
    """Group-preserving longest-processing-time-first sharding.

    A unit is a contiguous run of tests of one group (or of several small
    groups merged, when a shard has a fixed cost worth amortizing).  The target
    unit size is a quarter of a slot's fair share of the work: large enough
    that a module's fixtures are set up few times, small enough that the tail
    of the run balances.  Units are sorted longest first; the pieces of a split
    group keep their order, so one worker never runs a module backwards.
    """

    name = "longest-first"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        total = sum(t.estimate for t in tests)
        target = max(min_seconds, total / (max(slots, 1) * 4))
        units: list[list[TestSpec]] = []
        merging: dict[tuple[str, tuple[tuple[str, str], ...]], list[TestSpec]] = {}
        # Each bucket's running sum, added test by test as sum() would: re-summing the
        # bucket at every group made a million small tests take minutes.
        merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _, group_iter in itertools.groupby(tests, key=lambda t: (t.group, _placement_key(t))):
            group = list(group_iter)
            key = _placement_key(group[0])
            if sum(t.estimate for t in group) >= max(target, SPLIT_FLOOR):
                units.extend(_split(group, target))
                continue
            bucket = merging.setdefault(key, [])
            bucket.extend(group)
            acc = merged.get(key, 0)
            for test in group:
                acc += test.estimate
            merged[key] = acc
            if acc >= target:
                units.append(bucket)
                del merging[key], merged[key]
        units.extend(bucket for bucket in merging.values() if bucket)
        # Longest first, but the pieces of one split group stay in collection
        # order: they rank by the group's largest piece and keep their sequence.
        largest: dict[str, float] = {}
        for unit in units:
            size = sum(t.estimate for t in unit)
            largest[unit[0].group] = max(largest.get(unit[0].group, 0.0), size)
        units.sort(key=lambda unit: -largest[unit[0].group])
        return units


class PerGroup:
    """One unit per group (module), like pytest-xdist's ``--dist loadscope``."""

    name = "per-group"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        return [
            list(g) for _, g in itertools.groupby(tests, key=lambda t: (t.group, _placement_key(t)))
        ]


class PerTest:
    """One unit per test in manifest order, like pytest-xdist's ``--dist load`` at its finest."""

    name = "per-test"

    def units(
        self, tests: Sequence[TestSpec], slots: int, min_seconds: float
    ) -> list[list[TestSpec]]:
        return [[t] for t in tests]


def _split(group: list[TestSpec], target: float) -> list[list[TestSpec]]:
    """Cut *group* into contiguous pieces of about *target* seconds each."""
    pieces: list[list[TestSpec]] = [[]]
    acc = 0.0
    for test in group:
        if pieces[-1] and acc + test.estimate > target:
            pieces.append([])
            acc = 0.0
        pieces[-1].append(test)
        acc += test.estimate
    return pieces


def plan_run(
    tests: Sequence[TestSpec], policy: ShardingPolicy, slots: int, min_seconds: float
) -> RunPlan:
    """Cut *tests* into the units *policy* makes of them for a farm of *slots* slots.

    Pinned groups bypass the policy: each is one unit, in manifest order, wherever
    its tests sit in the manifest.  Units holding a ``first`` test go to the front,
    keeping their relative order, so ``--ff``'s failures start before anything else.
    """
    filled = fill_estimates(tests)
    pinned: dict[tuple[str, tuple[str, tuple[tuple[str, str], ...]]], list[TestSpec]] = {}
    for test in filled:
        if test.pinned:
            pinned.setdefault((test.group, _placement_key(test)), []).append(test)
    pinned_units = [_Unit(group, group[0].requires, pinned=True) for group in pinned.values()]
    pinned_units.sort(key=lambda unit: -unit.estimate)
    units = [u for u in pinned_units if any(t.first for t in u.tests)]
    for first in (True, False):
        free = [t for t in filled if t.first == first and not t.pinned]
        units.extend(_Unit(u, u[0].requires) for u in policy.units(free, slots, min_seconds) if u)
        if first:
            units.extend(u for u in pinned_units if not any(t.first for t in u.tests))
    return RunPlan(tests, units, frozenset(_requirements(u.requires) for u in units))


def _requirements(requires: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(requires.items()))


def fill_estimates(tests: Sequence[TestSpec]) -> list[TestSpec]:
    """Give tests without history (estimate 0) the median of those with one."""
    known = [t.estimate for t in tests if t.estimate > 0]
    median = statistics.median(known) if known else DEFAULT_ESTIMATE
    return [t if t.estimate > 0 else dataclasses.replace(t, estimate=median) for t in tests]


@dataclass
class _Slot:
    id: str
    host: str
    labels: Mapping[str, str]
    run: str | None = None  # the run whose shard it holds, if any


@dataclass
class _Run:
    id: str
    seq: int
    total: int
    queue: list[_Unit] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False


def placeable(requires: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every required dimension is among the host's values (comma-separated in a label)."""
    return all(v in labels.get(k, "").split(",") for k, v in requires.items())


class Scheduler:
    """Which shard each idle slot runs next, across all runs on the farm."""

    def __init__(
        self,
        policy: ShardingPolicy | None = None,
        *,
        min_shard_seconds: float = 0.0,
        max_retries: int = 1,
    ) -> None:
        self.policy = policy or LongestFirst()
        self.min_shard_seconds = min_shard_seconds
        self.max_retries = max_retries
        self._slots: dict[str, _Slot] = {}
        self._runs: dict[str, _Run] = {}
        self._seq = itertools.count()
        self._shard_ids = itertools.count(1)

    # -- slots -----------------------------------------------------------------
    def add_slot(self, slot_id: str, host: str, labels: Mapping[str, str] | None = None) -> None:
        self._slots[slot_id] = _Slot(slot_id, host, dict(labels or {}))

    def remove_slot(self, slot_id: str) -> None:
        self._slots.pop(slot_id, None)

    def release(self, slot_id: str) -> None:
        """The slot finished (or gave up) its shard and holds no run any more."""
        if slot_id in self._slots:
            self._slots[slot_id].run = None

    # -- runs ------------------------------------------------------------------
    def add_run(self, run_id: str, tests: Sequence[TestSpec]) -> list[TestSpec]:
        """Queue a run, or return the tests no current slot could ever run (and queue nothing)."""
        return self.install(run_id, self.planner()(tests))

    def planner(self) -> Callable[[Sequence[TestSpec]], RunPlan]:
        """:func:`plan_run` for the farm as it is now, safe to call in another thread."""
        return functools.partial(
            plan_run, policy=self.policy, slots=len(self._slots), min_seconds=self.min_shard_seconds
        )

    def install(self, run_id: str, plan: RunPlan) -> list[TestSpec]:
        """Queue a planned run, or return the tests no current slot could ever run (and
        queue nothing).  Slots may have come or gone since planning: placement is checked now.
        """
        stuck = {r for r in plan.placements if not self._any_slot_fits(dict(r))}
        if stuck:
            return [t for t in plan.tests if _requirements(t.requires) in stuck]
        run = _Run(run_id, next(self._seq), total=len(plan.tests))
        run.queue.extend(plan.units)
        self._runs[run_id] = run
        return []

    def _any_slot_fits(self, requires: Mapping[str, str]) -> bool:
        return any(placeable(requires, s.labels) for s in self._slots.values())

    def next_shard(self, slot_id: str) -> Shard | None:
        """Pick work for an idle slot: the neediest run's longest unit that fits the slot."""
        slot = self._slots[slot_id]
        previous, slot.run = slot.run, None
        held = self._slots_held()
        best: tuple[tuple[int, int, int], _Run, int] | None = None
        for run in self._runs.values():
            if run.cancelled:
                continue
            index = next(
                (
                    i
                    for i, unit in enumerate(run.queue)
                    if placeable(unit.requires, slot.labels)
                    and (unit.avoid_host != slot.host or not self._other_host_fits(unit, slot))
                ),
                None,
            )
            if index is None:
                continue
            # Fewest held slots first; a warm worker of the same run breaks ties; then age.
            rank = (held.get(run.id, 0), 0 if run.id == previous else 1, run.seq)
            if best is None or rank < best[0]:
                best = (rank, run, index)
        if best is None:
            return None
        _, run, index = best
        slot.run = run.id
        tests, retry = self._take(run, index)
        return Shard(next(self._shard_ids), run.id, tuple(tests), retry=retry)

    def _take(self, run: _Run, index: int) -> tuple[list[TestSpec], bool]:
        """Dequeue the unit at *index*, or only its head when it is too big for the tail.

        Guided self-scheduling: a shard is at most half of an equal share of
        the work still queued, so shards shrink as the run nears its end and
        the last slots finish together.  A remainder smaller than a worthwhile
        shard (hosts that pay per shard say how small) stays with the head.
        """
        unit = run.queue[index]
        remaining = sum(u.estimate for u in run.queue)
        limit = max(self.min_shard_seconds, remaining / (2 * max(len(self._slots), 1)), TAIL_FLOOR)
        splits = unit.estimate > limit and not unit.pinned
        head = _split(unit.tests, limit)[0] if splits else unit.tests
        rest = unit.estimate - sum(t.estimate for t in head)
        if len(head) == len(unit.tests) or rest < self.min_shard_seconds:
            del run.queue[index]
            return unit.tests, unit.retry
        unit.drop_head(len(head))
        return head, unit.retry

    def _other_host_fits(self, unit: _Unit, slot: _Slot) -> bool:
        return any(
            s.host != slot.host and placeable(unit.requires, s.labels) for s in self._slots.values()
        )

    def _slots_held(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for slot in self._slots.values():
            if slot.run is not None:
                held[slot.run] = held.get(slot.run, 0) + 1
        return held

    def finished(self, run_id: str, test_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.finished.add(test_id)

    def requeue(
        self,
        run_id: str,
        tests: Iterable[TestSpec],
        *,
        interrupted: TestSpec | None = None,
        lost_host: str | None = None,
    ) -> bool:
        """Put back work a lost slot never finished.

        *tests* never started and go back to the front of the queue, to run
        elsewhere than *lost_host* if any other host fits (a host that lost them
        may lose them again before it is quarantined).  The *interrupted* test
        was running when its slot was lost: it is retried once, likewise.
        Returns False when the interrupted test has used up its retries and
        must be reported failed.
        """
        run = self._runs.get(run_id)
        if run is None or run.cancelled:
            return True
        pending = [t for t in tests if t.id not in run.finished]
        for _, same in itertools.groupby(pending, key=lambda t: (_placement_key(t), t.pinned)):
            unit_tests = list(same)
            run.queue.insert(
                0,
                _Unit(
                    unit_tests,
                    unit_tests[0].requires,
                    avoid_host=lost_host,
                    pinned=unit_tests[0].pinned,
                ),
            )
        if interrupted is None or interrupted.id in run.finished:
            return True
        attempts = run.attempts.get(interrupted.id, 0)
        if attempts >= self.max_retries:
            return False
        run.attempts[interrupted.id] = attempts + 1
        run.queue.insert(
            0, _Unit([interrupted], interrupted.requires, retry=True, avoid_host=lost_host)
        )
        return True

    def cancel(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.cancelled = True
            run.queue.clear()

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        for slot in self._slots.values():
            if slot.run == run_id:
                slot.run = None

    def is_done(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is None or run.cancelled or len(run.finished) >= run.total

    def unplaceable(self, run_id: str) -> list[TestSpec]:
        """Queued tests that no remaining slot can run (e.g. after quarantine)."""
        run = self._runs.get(run_id)
        if run is None:
            return []
        stuck = [u for u in run.queue if not self._any_slot_fits(u.requires)]
        if stuck:
            run.queue = [u for u in run.queue if self._any_slot_fits(u.requires)]
        return [t for u in stuck for t in u.tests]

    def queued(self, run_id: str) -> int:
        run = self._runs.get(run_id)
        return 0 if run is None else sum(len(u.tests) for u in run.queue)

    def runs(self) -> list[str]:
        return list(self._runs)

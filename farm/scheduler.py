"""The farm's scheduler: a pure data structure deciding which tests run where.

No asyncio and no I/O live here, so the coordinator drives it from its event
loop (also in ``psyduck simulate``, on a virtual clock) and a hypothesis
state machine drives it just the same.  The coordinator tells it about slots
(one place where one worker runs at a time, on a host with some CPUs and
memory), runs, finished tests and lost work; it answers "what should this
idle slot run next?".

Three decisions are separate:

* a :class:`~farm.scheduling.policies.ShardingPolicy` turns one run's tests
  into units (future shards) in dispatch order — the default,
  :class:`LongestFirst`, keeps each group (a test module) together unless
  splitting it pays, and hands out the longest units first so the run ends
  close to ``max(longest, total / slots)``;
* the fairness rule across runs, in :meth:`Scheduler.next_shard`: an idle slot
  goes to the run holding the fewest slots, so one huge run cannot starve a
  small one;
* packing (:mod:`farm.scheduling.capacity`): a shard reserves CPUs and memory
  on its host, never more than the host has; when the run's next unit is too
  big for the room left, the host stops taking small shards until it fits.

Every decision costs the number of runs times the number of distinct placement
keys, whatever the number of queued tests (:mod:`farm.scheduling.queues`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from farm.manifest import TestSpec
from farm.scheduling.capacity import (
    DRAIN_SECONDS,
    Capacity,
    HostIndex,
    HostRoom,
    Labels,
    Need,
    placeable,
)
from farm.scheduling.policies import (
    LongestFirst,
    PerGroup,
    PerTest,
    PlacementKey,
    RunPlan,
    ShardingPolicy,
    Unit,
    micros,
    placement_key,
    plan_run,
)
from farm.scheduling.queues import RunQueue

__all__ = [
    "Capacity",
    "LongestFirst",
    "PerGroup",
    "PerTest",
    "RunPlan",
    "Scheduler",
    "Shard",
    "ShardingPolicy",
    "placeable",
]

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
class _Slot:
    id: str
    room: HostRoom
    labels: Labels
    run: str | None = None  # the run whose shard it holds, if any
    holds: Need = (0, 0)  # what that shard reserved on the host
    lasting: bool = False  # that shard may outlast a host's drain
    shard: int = 0  # the id of the shard it holds


@dataclass
class _Run:
    id: str
    seq: int
    total: int
    queue: RunQueue = field(default_factory=RunQueue)
    finished: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False
    held_back: bool = False  # its client lags (farm.spool): no new shards


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
        self._hosts = HostIndex()
        self._runs: dict[str, _Run] = {}
        self._held: dict[str, int] = {}  # slots held, by run
        self._seq = itertools.count()
        self._shard_ids = itertools.count(1)
        self._front = itertools.count(-1, -1)  # priorities of requeued work
        self._grown: set[str] = set()

    # -- slots -----------------------------------------------------------------
    def add_slot(
        self,
        slot_id: str,
        host: str,
        labels: Mapping[str, str] | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        """A slot of *host*; the host's *capacity* (if any) is shared by all its slots."""
        if slot_id in self._slots:
            self.remove_slot(slot_id)
        room = self._hosts.add_slot(host, labels or {}, capacity)
        self._slots[slot_id] = _Slot(slot_id, room, room.labels)

    def remove_slot(self, slot_id: str) -> None:
        slot = self._slots.pop(slot_id, None)
        if slot is not None:
            self._grew(slot.room, self._vacate(slot), (0, 0))
            self._hosts.remove_slot(slot.room.name)

    def release(self, slot_id: str) -> None:
        """The slot finished (or gave up) its shard and holds no run any more."""
        if slot_id in self._slots:
            slot = self._slots[slot_id]
            self._grew(slot.room, self._vacate(slot), (0, 0))

    def _vacate(self, slot: _Slot) -> Need:
        """Free what the slot held; return what that was."""
        if slot.run is not None:
            self._held[slot.run] -= 1
            slot.run = None
        held, slot.holds = slot.holds, (0, 0)
        slot.room.give_back(held, slot.lasting)
        return held

    def _grew(self, room: HostRoom, before: Need, after: Need) -> None:
        if after[0] < before[0] or after[1] < before[1]:
            self._grown.add(room.name)

    def hosts_with_room(self) -> set[str]:
        """Hosts with more CPUs or memory free than when last asked: their idle slots
        may now fit work they could not take before, and should ask again."""
        grown, self._grown = self._grown, set()
        return grown

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
        stuck = {key for key in plan.keys if not self._hosts.anywhere(key)}
        if stuck:
            return [t for t in plan.tests if placement_key(t) in stuck]
        run = _Run(run_id, next(self._seq), total=len(plan.tests))
        for unit in plan.units:
            run.queue.append(unit)
        self._runs[run_id] = run
        self._held.setdefault(run_id, 0)
        return []

    def next_shard(self, slot_id: str) -> Shard | None:
        """Pick work for an idle slot: the neediest run's first unit that fits the slot."""
        slot = self._slots[slot_id]
        previous = slot.run
        before = self._vacate(slot)
        shard = self._pick(slot, previous)
        self._grew(slot.room, before, slot.holds)
        return shard

    def _pick(self, slot: _Slot, previous: str | None) -> Shard | None:
        room = slot.room
        self._check_hold(room)
        # Fewest held slots first; a warm worker of the same run breaks ties; then age.
        runs = sorted(
            (r for r in self._runs.values() if r.queue.keys and not r.held_back),
            key=lambda r: (self._held[r.id], r.id != previous, r.seq),
        )
        for run in runs:
            first, fitting, keys = self._candidates(run, slot)
            if first is None:
                continue
            if room.reserved is not None and room.reserved not in keys:
                # Held for another run's big unit (or one this run's first tests must
                # not wait for), but this run's turn comes first.
                self._hosts.hold(room, None)
                first, fitting, keys = self._candidates(run, slot)
            if (
                fitting is not first
                and room.reserved is None
                and room.could_drain_for(first.key)
                and self._wanted(first.key, room)
            ):
                # Hold the host for the run's next big unit: no small shard fills it meanwhile.
                self._hosts.hold(room, first.key)
                first, fitting, keys = self._candidates(run, slot)
            if fitting is None:
                continue
            if room.reserved == fitting.key:
                self._hosts.hold(room, None)
            shard = self._dispatch(run, slot, fitting)
            self._check_hold(room)
            return shard
        return None

    def _check_hold(self, room: HostRoom) -> None:
        """Stop holding *room* back for a big shard no longer queued, or that could
        not fit before its long shards end; its idle slots may use the room now."""
        reserved = room.reserved
        if reserved is None:
            return
        if not self._wanted(reserved, room) or not room.could_drain_for(reserved):
            self._hosts.hold(room, None)
            self._grown.add(room.name)

    def _candidates(
        self, run: _Run, slot: _Slot
    ) -> tuple[Unit | None, Unit | None, set[PlacementKey]]:
        """The run's first unit the slot's labels allow, its first that fits the host
        now, and the placement keys of the units it may take next.

        While units holding ``first`` tests are queued, only those count, wherever
        the slot's labels allow one: the others wait, even where they would fit.
        """
        first = fitting = None
        room = slot.room
        heads = []
        for key, queue in run.queue.keys.items():
            if not self._hosts.labels_fit(slot.labels, key):
                continue
            if queue.avoiding:  # requeued units that avoid a host: ask where else they fit
                elsewhere = functools.partial(self._hosts.anywhere, key, but=room.name)
                unit = queue.head(room.name, elsewhere)
            else:
                unit = queue.ready[0] if queue.ready else None
            if unit is not None:
                heads.append(unit)
        if run.queue.firsts and any(u.first for u in heads):
            heads = [u for u in heads if u.first]
        for unit in heads:
            if first is None or unit.priority < first.priority:
                first = unit
            if (fitting is None or unit.priority < fitting.priority) and room.fits(unit.key):
                fitting = unit
        return first, fitting, {u.key for u in heads}

    def _wanted(self, key: PlacementKey, room: HostRoom | None = None) -> bool:
        """Tests of *key* are queued beyond the hosts already held for them (besides *room*).

        Tests, not units: the tail of a run hands a unit out a test at a time, and
        each of those shards needs a host with the room.
        """
        queued = sum(q.tests for r in self._runs.values() if (q := r.queue.keys.get(key)))
        held = self._hosts.holding.get(key, 0) - (room is not None and room.reserved == key)
        return queued > held

    def _dispatch(self, run: _Run, slot: _Slot, unit: Unit) -> Shard:
        slot.run = run.id
        self._held[run.id] += 1
        tests = self._take(run, unit)
        slot.holds = slot.room.need(unit.key)
        # An untimed test's length is a guess: it lasts once it has run that long
        # (:meth:`outlasted`), not before — most are as short as the rest.
        slot.lasting = sum(micros(t.estimate) for t in tests) > micros(DRAIN_SECONDS)
        slot.room.take(slot.holds, slot.lasting)
        slot.shard = next(self._shard_ids)
        return Shard(slot.shard, run.id, tuple(tests), retry=unit.retry)

    def outlasted(self, slot_id: str, shard_id: int) -> None:
        """Shard *shard_id* of *slot_id* has run :data:`DRAIN_SECONDS` and goes on: its
        host is no longer held back for a big shard that would wait for it to end."""
        slot = self._slots.get(slot_id)
        if slot is None or slot.shard != shard_id or slot.lasting or slot.holds == (0, 0):
            return
        slot.room.give_back(slot.holds, False)
        slot.lasting = True
        slot.room.take(slot.holds, True)
        self._check_hold(slot.room)

    def _take(self, run: _Run, unit: Unit) -> list[TestSpec]:
        """Dequeue *unit*, or only its head when it is too big for the tail.

        Guided self-scheduling: a shard is at most half of an equal share of
        the work still queued, so shards shrink as the run nears its end and
        the last slots finish together.  A remainder smaller than a worthwhile
        shard (hosts that pay per shard say how small) stays with the head.
        """
        slots = max(len(self._slots), 1)
        minimum = micros(self.min_shard_seconds)
        if unit.guessed:
            # Guessed lengths: no shard need wait for a slot's fair share of the queue,
            # but a host's per-shard cost is still not paid for less than that share.
            minimum = min(minimum, run.queue.size // slots)
        limit = max(minimum, run.queue.size // (2 * slots), micros(TAIL_FLOOR))
        if not unit.pinned and unit.size > limit:
            count, size = unit.head(limit)
            if count < len(unit) and unit.size - size >= minimum:
                tests = unit.tests[unit.start : unit.start + count]
                run.queue.shrink(unit, count, size)
                return tests
        run.queue.remove(unit)
        return unit.tests[unit.start :]

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
        for (key, pinned), same in itertools.groupby(
            pending, key=lambda t: (placement_key(t), t.pinned)
        ):
            unit = Unit(list(same), key, priority=next(self._front), pinned=pinned)
            unit.avoid_host = lost_host
            # Already dispatched once: in front of the run's queue, first tests' or not.
            unit.first |= run.queue.firsts > 0
            run.queue.push_front(unit)
        if interrupted is None or interrupted.id in run.finished:
            return True
        attempts = run.attempts.get(interrupted.id, 0)
        if attempts >= self.max_retries:
            return False
        run.attempts[interrupted.id] = attempts + 1
        key = placement_key(interrupted)
        retry = Unit([interrupted], key, priority=next(self._front), retry=True)
        retry.avoid_host = lost_host
        retry.first |= run.queue.firsts > 0
        run.queue.push_front(retry)
        return True

    def hold_back(self, run_id: str, held: bool) -> None:
        """Hand *run_id* no new shards while *held* (its client lags behind its results)."""
        if (run := self._runs.get(run_id)) is not None:
            run.held_back = held

    def cancel(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.cancelled = True
            run.queue.clear()

    def forget(self, run_id: str) -> None:
        if self._runs.pop(run_id, None) is None:
            return
        # Its slots keep their reservations until they are released: their workers
        # may still be ending.
        for slot in self._slots.values():
            if slot.run == run_id:
                slot.run = None
        self._held.pop(run_id, None)

    def is_done(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is None or run.cancelled or len(run.finished) >= run.total

    def unplaceable(self, run_id: str) -> list[TestSpec]:
        """Queued tests that no remaining slot can run (e.g. after quarantine)."""
        run = self._runs.get(run_id)
        if run is None:
            return []
        stuck = [key for key in run.queue.keys if not self._hosts.anywhere(key)]
        return [t for key in stuck for u in run.queue.drop(key) for t in u.tests[u.start :]]

    def queued(self, run_id: str) -> int:
        run = self._runs.get(run_id)
        return 0 if run is None else run.queue.tests

    def runs(self) -> list[str]:
        return list(self._runs)

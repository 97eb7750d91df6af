"""The scheduler's invariants, driven by a discrete-event simulation (no I/O, no asyncio)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.manifest import TestSpec
from farm.scheduler import LongestFirst, PerGroup, PerTest, Scheduler
from farm.scheduling.policies import REPORT_COST


def simulate(
    scheduler: Scheduler, durations: dict[str, float], slots: list[str]
) -> tuple[float, list[tuple[str, str, str]]]:
    """Run every queued shard to completion.

    Returns the makespan and ``(slot, run, test)`` for each test in start order.
    """
    clock = 0.0
    events: list[tuple[float, str, list[TestSpec], str]] = []
    log = []
    idle = list(slots)
    while True:
        for slot in list(idle):
            shard = scheduler.next_shard(slot)
            if shard is None:
                scheduler.release(slot)
                continue
            idle.remove(slot)
            finish = clock + sum(durations[t.id] for t in shard.tests)
            for test in shard.tests:
                log.append((slot, shard.run, test.id))
            heapq.heappush(events, (finish, slot, list(shard.tests), shard.run))
        if not events:
            return clock, log
        clock, slot, tests, run = heapq.heappop(events)
        for test in tests:
            scheduler.finished(run, test.id)
        idle.append(slot)


suites = st.lists(
    st.tuples(st.integers(0, 8), st.floats(0.001, 20.0)), min_size=1, max_size=80
).map(
    lambda rows: [
        TestSpec(id=f"m{g}.py::t{i}", group=f"m{g}.py", estimate=d)
        for i, (g, d) in enumerate(sorted(rows, key=lambda r: r[0]))
    ]
)


@settings(max_examples=200, deadline=None)
@given(suites, st.integers(1, 8), st.sampled_from([LongestFirst, PerGroup, PerTest]))
def test_every_test_runs_exactly_once_and_in_group_order(tests, nslots, policy):
    scheduler = Scheduler(policy())
    slots = [f"h/{i}" for i in range(nslots)]
    for slot in slots:
        scheduler.add_slot(slot, "h")
    assert scheduler.add_run("r", tests) == []
    _, log = simulate(scheduler, {t.id: t.estimate for t in tests}, slots)
    ran = [test for _, _, test in log]
    assert sorted(ran) == sorted(t.id for t in tests)
    assert scheduler.is_done("r")
    # Within one slot, the tests of one group keep their collection order.
    order = {t.id: i for i, t in enumerate(tests)}
    for slot in slots:
        mine = [test for s, _, test in log if s == slot]
        by_group: dict[str, list[int]] = {}
        for test in mine:
            by_group.setdefault(test.split("::")[0], []).append(order[test])
        for indices in by_group.values():
            assert indices == sorted(indices)


@settings(max_examples=200, deadline=None)
@given(suites, st.integers(1, 8))
def test_longest_first_finishes_close_to_the_ideal(tests, nslots):
    scheduler = Scheduler(LongestFirst())
    slots = [f"h/{i}" for i in range(nslots)]
    for slot in slots:
        scheduler.add_slot(slot, "h")
    scheduler.add_run("r", tests)
    makespan, _ = simulate(scheduler, {t.id: t.estimate for t in tests}, slots)
    total = sum(t.estimate for t in tests)
    longest = max(t.estimate for t in tests)
    # LPT over units no larger than max(a quarter share, the split floor, one test).
    unit_bound = max(total / (4 * nslots), 0.5) + longest
    assert makespan <= max(longest, total / nslots) + unit_bound + 1e-6


def test_sleep_suite_is_near_ideal():
    tests = [
        TestSpec(id=f"m{i % 20}.py::t{i}", group=f"m{i % 20}.py", estimate=0.025)
        for i in range(400)
    ]
    tests.sort(key=lambda t: t.group)
    scheduler = Scheduler()
    slots = [f"h/{i}" for i in range(8)]
    for slot in slots:
        scheduler.add_slot(slot, "h")
    scheduler.add_run("r", tests)
    makespan, _ = simulate(scheduler, {t.id: 0.025 for t in tests}, slots)
    # The tail shrinks to single tests, so the last slots finish within one test of each other.
    assert makespan <= 400 * 0.025 / 8 + 0.025 + 1e-9


def test_fair_share_between_runs():
    scheduler = Scheduler(PerTest())
    slots = [f"h/{i}" for i in range(4)]
    for slot in slots:
        scheduler.add_slot(slot, "h")
    scheduler.add_run("huge", [TestSpec(id=f"big{i}", group="g", estimate=1) for i in range(1000)])
    for slot in slots:
        assert scheduler.next_shard(slot).run == "huge"
    scheduler.add_run("small", [TestSpec(id=f"small{i}", group="g", estimate=1) for i in range(4)])
    # As slots free up, the small run gets them until it holds its share.
    taken = [scheduler.next_shard(slot).run for slot in slots]
    assert taken.count("small") == 2


def test_requirements_place_tests_on_matching_hosts_only():
    scheduler = Scheduler(PerTest())
    scheduler.add_slot("plain/0", "plain", {"cpu": "sse2"})
    scheduler.add_slot("fast/0", "fast", {"cpu": "sse2,avx2"})
    tests = [TestSpec(id="a", group="g", requires={"cpu": "avx2"}), TestSpec(id="b", group="g")]
    assert scheduler.add_run("r", tests) == []
    assert scheduler.next_shard("plain/0").tests[0].id == "b"
    assert scheduler.next_shard("plain/0") is None
    assert scheduler.next_shard("fast/0").tests[0].id == "a"


def test_unplaceable_tests_are_refused_up_front():
    scheduler = Scheduler()
    scheduler.add_slot("h/0", "h", {"cpu": "sse2"})
    bad = TestSpec(id="a", group="g", requires={"cpu": "avx512f"})
    assert scheduler.add_run("r", [bad, TestSpec(id="b", group="g")]) == [bad]
    assert scheduler.runs() == []


def test_interrupted_test_is_retried_once_elsewhere():
    scheduler = Scheduler(PerTest())
    scheduler.add_slot("a/0", "a")
    scheduler.add_slot("b/0", "b")
    test = TestSpec(id="t", group="g")
    scheduler.add_run("r", [test])
    assert [t.id for t in scheduler.next_shard("a/0").tests] == ["t"]
    assert scheduler.requeue("r", [], interrupted=test, lost_host="a")
    assert scheduler.next_shard("a/0") is None  # avoids the host that was lost
    shard = scheduler.next_shard("b/0")
    assert shard.retry and [t.id for t in shard.tests] == ["t"]
    assert not scheduler.requeue("r", [], interrupted=test, lost_host="b")  # no second retry


def test_work_a_host_lost_goes_elsewhere_first_but_not_nowhere():
    scheduler = Scheduler(PerTest())
    scheduler.add_slot("a/0", "a")
    scheduler.add_slot("b/0", "b")
    tests = [TestSpec(id=f"t{i}", group="g") for i in range(2)]
    scheduler.add_run("r", tests)
    assert [t.id for t in scheduler.next_shard("a/0").tests] == ["t0"]
    scheduler.requeue("r", [tests[0]], lost_host="a")
    assert [t.id for t in scheduler.next_shard("a/0").tests] == ["t1"]  # t0 waits for b
    assert [t.id for t in scheduler.next_shard("b/0").tests] == ["t0"]
    scheduler.requeue("r", [tests[0]], lost_host="b")
    scheduler.remove_slot("a/0")
    assert [t.id for t in scheduler.next_shard("b/0").tests] == ["t0"]  # b is all there is


@settings(max_examples=100, deadline=None)
@given(suites, st.integers(2, 6), st.data())
def test_lost_work_is_rerun_and_nothing_is_lost(tests, nslots, data):
    scheduler = Scheduler(LongestFirst())
    slots = [f"h{i}/0" for i in range(nslots)]
    for slot in slots:
        scheduler.add_slot(slot, slot.split("/")[0])
    scheduler.add_run("r", tests)
    shard = scheduler.next_shard(slots[0])
    done = data.draw(st.integers(0, len(shard.tests)))
    for test in shard.tests[:done]:
        scheduler.finished("r", test.id)
    rest = list(shard.tests[done:])
    if rest:
        scheduler.requeue("r", rest[1:], interrupted=rest[0], lost_host="h0")
    scheduler.remove_slot(slots[0])
    _, log = simulate(scheduler, {t.id: t.estimate for t in tests}, slots[1:])
    assert sorted([t.id for t in shard.tests[:done]] + [t for _, _, t in log]) == sorted(
        t.id for t in tests
    )
    assert scheduler.is_done("r")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()), min_size=1, max_size=60
    ),
    st.integers(1, 6),
)
def test_a_pinned_group_is_one_shard_in_manifest_order(rows, nslots):
    tests = [
        TestSpec(
            id=f"m{m}.py::t{i}",
            group=f"g{g}" if pinned else f"m{m}.py",
            estimate=0.5,
            pinned=pinned,
        )
        for i, (m, g, pinned) in enumerate(rows)
    ]
    sched = Scheduler()
    for n in range(nslots):
        sched.add_slot(f"s{n}", "h")
    assert sched.add_run("r", tests) == []
    shards = []
    while (shard := sched.next_shard("s0")) is not None:
        shards.append(shard)
    assert sorted(t.id for s in shards for t in s.tests) == sorted(t.id for t in tests)
    for group in {t.group for t in tests if t.pinned}:
        holding = [s for s in shards if any(t.group == group and t.pinned for t in s.tests)]
        assert len(holding) == 1
        assert [t.id for t in holding[0].tests] == [
            t.id for t in tests if t.pinned and t.group == group
        ]


def test_first_tests_are_dispatched_before_longer_ones():
    tests = [TestSpec(id=f"m{i}.py::t", group=f"m{i}.py", estimate=10.0) for i in range(5)]
    tests.append(TestSpec(id="z.py::failed", group="z.py", estimate=0.01, first=True))
    sched = Scheduler()
    sched.add_slot("s0", "h")
    assert sched.add_run("r", tests) == []
    shard = sched.next_shard("s0")
    assert shard is not None
    assert shard.tests[0].id == "z.py::failed"


def test_a_module_holding_an_hours_long_test_goes_before_untimed_tests():
    # The hours-long test sits behind quick tests of its module: the module's pieces
    # rank by its longest, so all of them go before the untimed tests, not behind them.
    slow = [TestSpec(id=f"slow.py::quick{i}", group="slow.py", estimate=0.5) for i in range(40)]
    slow.append(TestSpec(id="slow.py::hours", group="slow.py", estimate=3600.0))
    quick = [TestSpec(id=f"q{i}.py::t", group=f"q{i}.py", estimate=0.2) for i in range(20)]
    untimed = [TestSpec(id=f"new{i}.py::t", group=f"new{i}.py") for i in range(30)]
    sched = Scheduler()
    for s in range(4):
        sched.add_slot(f"h/{s}", "h")
    assert sched.add_run("r", [*slow, *quick, *untimed]) == []
    order = []
    while (shard := sched.next_shard("h/0")) is not None:
        order.extend(t.id for t in shard.tests)
    assert order.index("slow.py::hours") < order.index("new0.py::t")


def test_the_hosts_minimum_shard_never_leaves_a_slot_without_work():
    """A 4 s suite on 2 slots with a 6 s minimum shard: two shards, not one."""
    from farm.scheduling.policies import plan_run

    tests = [
        TestSpec(id=f"m{i % 6}.py::t{i}", group=f"m{i % 6}.py", estimate=0.1) for i in range(40)
    ]
    plan = plan_run(tests, LongestFirst(), slots=2, min_seconds=6.0)
    assert len(plan.units) >= 2
    assert sorted(t.id for u in plan.units for t in u.tests) == sorted(t.id for t in tests)
    # A suite long enough keeps the minimum: it still coarsens a 30 s suite's shards.
    long = [
        TestSpec(id=f"m{i % 6}.py::t{i}", group=f"m{i % 6}.py", estimate=0.1) for i in range(300)
    ]
    coarse = plan_run(long, LongestFirst(), 2, 6.0).units
    assert len(coarse) < len(plan_run(long, LongestFirst(), 2, 0.0).units)


@settings(max_examples=300, deadline=None)
@given(suites, st.integers(1, 8), st.floats(0.0, 30.0))
def test_a_unit_of_merged_groups_overshoots_its_target_by_no_more_than_it_would_lack(
    tests, slots, min_seconds
):
    """When a run is cut into about one unit per slot, its largest unit is its length:
    a unit of small groups closes where it is nearest its target, with or without the
    last group."""
    micros = {t.id: round(t.estimate * 1_000_000) for t in tests}
    total = sum(micros.values())
    target = max(round(min_seconds * 1_000_000), min(total // (slots * 4), 10_000_000))
    if target * slots >= total - len(tests):
        return  # packed into one unit per slot instead: see the test below
    for unit in LongestFirst().units(tests, slots, min_seconds):
        groups = [t.group for t in unit]
        if len(set(groups)) < 2:
            continue  # one group, or a piece of a split one
        size = sum(micros[t.id] for t in unit)
        last = sum(micros[t.id] for t in unit if t.group == groups[-1])
        if size > target:
            assert size - target <= target - (size - last)


@settings(max_examples=300, deadline=None)
@given(suites, st.integers(1, 8))
def test_a_run_cut_into_one_unit_per_slot_is_packed_evenly(tests, slots):
    """The hosts' minimum shard at least a slot's share: at most one unit per slot, each
    within the largest group of an equal share (longest processing time first, a test
    weighing its estimate and its report), and each in collection order."""
    weight = {t.id: round((t.estimate + REPORT_COST) * 1_000_000) for t in tests}
    groups: dict[str, int] = {}
    for test in tests:
        groups[test.group] = groups.get(test.group, 0) + weight[test.id]
    min_seconds = sum(weight.values()) / 1_000_000  # no group is split
    units = LongestFirst().units(tests, slots, min_seconds)
    assert len(units) <= slots
    assert sorted(t.id for u in units for t in u) == sorted(t.id for t in tests)
    position = {t.id: i for i, t in enumerate(tests)}
    share = sum(weight.values()) / slots
    for unit in units:
        assert [position[t.id] for t in unit] == sorted(position[t.id] for t in unit)
        assert sum(weight[t.id] for t in unit) <= share + max(groups.values()) + len(unit)

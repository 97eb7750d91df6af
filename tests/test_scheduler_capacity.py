"""The scheduler's invariants with hosts of limited CPUs and memory, several runs, lost hosts.

A discrete-event driver (no I/O) plays the coordinator's part; what a host
holds is worked out here from each shard's tests, not read from the scheduler.
"""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.manifest import TestSpec
from farm.scheduler import Capacity, PerTest, Scheduler
from farm.scheduling.policies import split
from tests.schedulerlib import Farm, two_runs_losing_a_host

GiB = 1 << 30


def suite(rows, prefix: str = "") -> list[TestSpec]:
    return [
        TestSpec(
            id=f"{prefix}m{g}.py::t{i}",
            group=f"{prefix}m{g}.py",
            estimate=d,
            cpus=cpus,
            memory=None if memory is None else memory * GiB,
        )
        for i, (g, d, cpus, memory) in enumerate(sorted(rows, key=lambda r: r[0]))
    ]


rows = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.floats(0.001, 20.0),
        st.sampled_from([None, None, 1.0, 3.0, 8.0, 32.0]),
        st.sampled_from([None, None, 2, 8, 16, 128]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rows, st.integers(1, 3), st.integers(1, 6), st.sampled_from([4.0, 16.0]))
def test_never_over_capacity_and_every_test_runs_once(rows, hosts, slots, cpus):
    tests = suite(rows)
    scheduler = Scheduler()
    farm = Farm(scheduler, hosts, slots, Capacity(cpus, 64 * GiB))
    assert scheduler.add_run("r", tests) == []
    farm.wake()
    while farm.step():
        pass
    assert sorted(t for _, _, t, _ in farm.log) == sorted(t.id for t in tests)
    assert scheduler.is_done("r")


plain = st.lists(
    st.tuples(st.integers(0, 6), st.floats(0.001, 20.0), st.none(), st.none()),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(plain, plain, st.integers(1, 3), st.integers(1, 4), st.integers(0, 6))
def test_an_idle_slot_goes_to_the_run_holding_fewest_slots(big, small, hosts, slots, arrival):
    scheduler = Scheduler()
    farm = Farm(scheduler, hosts, slots, Capacity(16.0, 64 * GiB))
    assert scheduler.add_run("big", suite(big, "b")) == []
    farm.wake(fairness=True)
    for _ in range(arrival):
        farm.step(fairness=True)
    assert scheduler.add_run("small", suite(small, "s")) == []
    farm.wake(fairness=True)
    while farm.step(fairness=True):
        pass
    assert scheduler.is_done("big") and scheduler.is_done("small")


@settings(max_examples=100, deadline=None)
@given(rows, rows, st.integers(2, 3), st.integers(2, 5), st.data())
def test_a_lost_host_loses_no_test_of_any_run(big, small, hosts, slots, data):
    tests = {"big": suite(big, "b"), "small": suite(small, "s")}
    scheduler = Scheduler(max_retries=5)
    farm = Farm(scheduler, hosts, slots, Capacity(16.0, 64 * GiB))
    rerun = two_runs_losing_a_host(scheduler, farm, tests, data, steps=5)
    dispatched = collections.Counter((run, test) for _, run, test, _ in farm.log)
    expected = collections.Counter({(run, t.id): 1 for run, ts in tests.items() for t in ts})
    assert dispatched == expected + rerun
    assert scheduler.is_done("big") and scheduler.is_done("small")


def test_a_big_test_is_not_starved_by_a_stream_of_small_ones():
    scheduler = Scheduler(PerTest())
    farm = Farm(scheduler, 1, 16, Capacity(16.0, 64 * GiB))
    small = [TestSpec(id=f"s{i}", group="s", estimate=1.0) for i in range(400)]
    big = TestSpec(id="big", group="b", estimate=5.0, cpus=8.0, memory=16 * GiB)
    # The big test comes after the first wave of small ones, in dispatch order.
    assert scheduler.add_run("r", [*small[:16], big, *small[16:]]) == []
    farm.wake()
    while farm.step():
        pass
    start = {t: s for _, _, t, s in farm.log}
    assert start["big"] <= 2.0  # the host drained for it, instead of running 400 s first


def test_shards_of_hundredths_are_cut_at_whole_seconds():
    tests = [TestSpec(id=f"t{i}", group="g", estimate=0.01) for i in range(1000)]
    assert [len(p) for p in split(tests, 1_000_000)] == [100] * 10


def test_untimed_tests_reach_every_slot_despite_a_minimum_shard():
    scheduler = Scheduler(min_shard_seconds=1.0)
    for s in range(240):
        scheduler.add_slot(f"h/{s}", "h")
    tests = [TestSpec(id=f"m{i // 10}.py::t{i}", group=f"m{i // 10}.py") for i in range(10_000)]
    assert scheduler.add_run("r", tests) == []
    shards = [scheduler.next_shard(f"h/{s}") for s in range(240)]
    assert all(shards)


def test_untimed_tests_beside_timed_ones_start_early_and_alone():
    timed = [TestSpec(id=f"a{i}.py::t", group=f"a{i}.py", estimate=5.0) for i in range(50)]
    # Two variants of a new test: if it lasts hours, they must not queue behind each other.
    untimed = [TestSpec(id=f"new.py::t[{v}]", group="new.py") for v in range(2)]
    scheduler = Scheduler()
    scheduler.add_slot("h/0", "h")
    scheduler.add_slot("h/1", "h")
    assert scheduler.add_run("r", [*timed, *untimed]) == []
    assert [t.id for t in scheduler.next_shard("h/0").tests] == ["new.py::t[0]"]
    assert [t.id for t in scheduler.next_shard("h/1").tests] == ["new.py::t[1]"]


def test_a_docker_hosts_configured_capacity_is_what_its_slots_share():
    from farm.hosts.docker import DockerHost

    host = DockerHost(2, memory=8 * GiB, cpus=4.0, name="d")
    assert host.capacity() == Capacity(4.0, 8 * GiB)
    assert DockerHost(2, name="e").capacity() is None  # known once its engine is reached
    scheduler = Scheduler(PerTest())
    for s in range(2):
        scheduler.add_slot(f"d/{s}", "d", host.labels, host.capacity())
    tests = [TestSpec(id=f"t{i}", group="g", cpus=3.0) for i in range(2)]
    assert scheduler.add_run("r", tests) == []
    assert scheduler.next_shard("d/0") is not None
    assert scheduler.next_shard("d/1") is None  # 3 + 3 CPUs would be more than the host's 4
    scheduler.release("d/0")
    assert scheduler.hosts_with_room() == {"d"}
    assert scheduler.next_shard("d/1") is not None


def test_a_host_held_for_one_runs_big_test_still_serves_a_run_with_fewer_slots():
    scheduler = Scheduler(PerTest())
    for s in range(4):
        scheduler.add_slot(f"h/{s}", "h", {}, Capacity(4.0, 16 * GiB))
    big = [TestSpec(id=f"light{i}", group="g", estimate=1.0) for i in range(3)]
    big += [TestSpec(id=f"heavy{i}", group="g", estimate=1.0, cpus=4.0) for i in range(2)]
    assert scheduler.add_run("big", big) == []
    assert [scheduler.next_shard(f"h/{s}").tests[0].id for s in range(3)] == [
        "light0",
        "light1",
        "light2",
    ]
    assert scheduler.next_shard("h/3") is None  # the host drains for heavy0
    assert scheduler.add_run("small", [TestSpec(id="quick", group="q", estimate=1.0)]) == []
    assert scheduler.next_shard("h/3").tests[0].id == "quick"  # its turn: fewest slots held


def test_a_host_busy_for_long_is_not_held_back_for_a_big_test():
    scheduler = Scheduler(PerTest())
    for s in range(2):
        scheduler.add_slot(f"h/{s}", "h", {}, Capacity(2.0, 8 * GiB))
    tests = [
        TestSpec(id="hours", group="g", estimate=3600.0),
        TestSpec(id="big", group="g", estimate=5.0, cpus=2.0),
        TestSpec(id="light", group="g", estimate=1.0),
    ]
    assert scheduler.add_run("r", tests) == []
    assert scheduler.next_shard("h/0").tests[0].id == "hours"
    # "big" cannot fit before "hours" ends: the other CPU serves meanwhile.
    assert scheduler.next_shard("h/1").tests[0].id == "light"


def test_an_untimed_shard_lasts_once_it_has_run_long_not_before():
    scheduler = Scheduler(PerTest())
    for s in range(2):
        scheduler.add_slot(f"h/{s}", "h", {}, Capacity(2.0, 8 * GiB))
    assert scheduler.add_run("new", [TestSpec(id="untimed", group="n")]) == []
    guessed = scheduler.next_shard("h/0")
    assert guessed.tests[0].id == "untimed"
    tests = [
        TestSpec(id="big", group="g", estimate=5.0, cpus=2.0),
        TestSpec(id="light", group="g", estimate=1.0),
    ]
    assert scheduler.add_run("r", tests) == []
    # Most untimed tests are short: the host is held back for "big" meanwhile.
    assert scheduler.next_shard("h/1") is None
    scheduler.hosts_with_room()
    # It has run 30 s and goes on (the coordinator says so): "big" would wait for it.
    scheduler.outlasted("h/0", guessed.id)
    assert scheduler.hosts_with_room() == {"h"}
    assert scheduler.next_shard("h/1").tests[0].id == "light"

"""Pinned groups and ``first`` tests with capacity packing, several runs and a lost host.

A discrete-event driver (no I/O) plays the coordinator's part, as in
``test_scheduler_capacity.py``; what a host holds is worked out here from each
shard's tests.  The invariants hold together: no host is ever given more
CPUs or memory than it has; every test is dispatched exactly once, plus once
more for each time a lost host took it; a pinned group's tests run as one
shard, in manifest order (unless a lost host interrupted it); and a run's
``first`` tests (``--ff``'s previous failures) are all dispatched before any
other test of that run (a pinned group holding one goes first whole).
"""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.manifest import TestSpec
from farm.scheduler import Capacity, Scheduler
from tests.schedulerlib import Farm, two_runs_losing_a_host

GiB = 1 << 30
CAPACITY = Capacity(8.0, 32 * GiB)


#: One group: (pinned, hints, rows); a row is (estimate, first).
groups = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from([(None, None), (None, None), (2.0, 4), (4.0, 16), (8.0, 32)]),
        st.lists(st.tuples(st.floats(0.001, 10.0), st.booleans()), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=8,
)


def suite(spec, prefix: str) -> list[TestSpec]:
    """Tests in manifest order; a pinned group is an ``xdist_group`` with its own hints."""
    tests = []
    for g, (pinned, (cpus, memory), rows) in enumerate(spec):
        group = f"{prefix}g{g}" if pinned else f"{prefix}m{g}.py"
        for i, (estimate, first) in enumerate(rows):
            tests.append(
                TestSpec(
                    id=f"{group}::t{i}",
                    group=group,
                    estimate=estimate,
                    cpus=cpus,
                    memory=None if memory is None else memory * GiB,
                    pinned=pinned,
                    first=first,
                )
            )
    return tests


@settings(max_examples=200, deadline=None)
@given(groups, groups, st.integers(2, 3), st.integers(1, 4), st.data())
def test_pinned_groups_and_first_tests_with_packing_and_a_lost_host(big, small, hosts, slots, data):
    tests = {"big": suite(big, "b"), "small": suite(small, "s")}
    scheduler = Scheduler(max_retries=5)
    farm = Farm(scheduler, hosts, slots, CAPACITY)
    rerun = two_runs_losing_a_host(scheduler, farm, tests, data, steps=4)
    assert scheduler.is_done("big") and scheduler.is_done("small")

    dispatched = collections.Counter((s.run, t.id) for s, _ in farm.shards for t in s.tests)
    expected = collections.Counter({(run, t.id): 1 for run, ts in tests.items() for t in ts})
    assert dispatched == expected + rerun

    lost_tests = {(s.run, t.id) for s, lost in farm.shards if lost for t in s.tests}
    for run, run_tests in tests.items():
        for group in {t.group for t in run_tests if t.pinned}:
            members = [t.id for t in run_tests if t.group == group]
            if any((run, m) in lost_tests for m in members):
                continue  # a lost host interrupted it: its rest runs again apart
            holding = [s for s, _ in farm.shards if s.run == run and s.tests[0].group == group]
            assert [[t.id for t in s.tests] for s in holding] == [members]

        # Each test's first dispatch (a rerun after a loss comes when the loss happens).
        # A pinned group holding a first test goes first whole, in its order.
        leading = {t.group for t in run_tests if t.pinned and t.first}
        lead = {t.id for t in run_tests if t.first or (t.pinned and t.group in leading)}
        order = dict.fromkeys(t.id for s, _ in farm.shards if s.run == run for t in s.tests)
        firsts = [i for i, t in enumerate(order) if t in lead]
        others = [i for i, t in enumerate(order) if t not in lead]
        if firsts and others:
            assert max(firsts) < min(others), "a first test came after another test of its run"

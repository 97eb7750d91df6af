"""The simulation's machinery: a virtual-time event loop, and the real coordinator on it.

``psyduck simulate`` is only worth its figures if what it simulates is the
farm's own code: these tests check that each run goes through
:class:`farm.coordinator.Coordinator` (submit, slot tasks, worker talk,
reports, host faults), and that virtual time neither sleeps nor depends on
threads.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

from farm.coordinator import Coordinator
from farm.simulation.engine import simulate_runs
from farm.simulation.virtual import VirtualLoop
from farm.simulation.workload import Options, generate


def test_virtual_time_jumps_to_the_next_timer_without_sleeping():
    loop = VirtualLoop()

    async def day() -> tuple[float, str]:
        woken = []
        loop.call_later(7200.0, woken.append, "timer")
        async with asyncio.timeout(86_400.0):
            await asyncio.sleep(3600.0)
        # A thread's work runs inline: it takes no virtual time and always ends first.
        where = await asyncio.to_thread(lambda: "inline")
        return loop.time(), f"{where} {woken}"

    started = time.monotonic()
    try:
        assert loop.run_until_complete(day()) == (3600.0, "inline []")
    finally:
        loop.close()
    assert time.monotonic() - started < 60  # an hour of virtual time did not pass for real


def test_the_simulation_runs_every_test_through_the_real_coordinator(monkeypatch):
    reported: collections.Counter[str] = collections.Counter()
    slots_served: list[str] = []
    real_report, real_serve = Coordinator._report, Coordinator._serve_slot

    def report(self, run, test_id, event):
        reported[test_id] += event["t"] == "result"
        return real_report(self, run, test_id, event)

    def serve(self, state, index, slot_id, held):
        slots_served.append(slot_id)
        return real_serve(self, state, index, slot_id, held)

    monkeypatch.setattr(Coordinator, "_report", report)
    monkeypatch.setattr(Coordinator, "_serve_slot", serve)
    options = Options(hosts=3, slots=2, tests=60, variants=2, heavy=0.1, long=0.02)
    rng = random.Random(5)
    big = generate(options, rng, "big", options.tests, options.variants)
    small = generate(options, rng, "small", 5, 1)
    outcome, scheduler = simulate_runs(
        options, [(0.0, "big", big), (30.0, "small", small)], [], rng
    )
    assert set(outcome.finish) == {"big", "small"}
    assert reported == {t.id: 1 for suite in (big, small) for t in suite.tests}
    assert sorted(set(slots_served)) == [f"host{h}/{s}" for h in range(3) for s in range(2)]
    assert scheduler.decisions > 0 and outcome.oversubscribed == 0


def test_lost_hosts_go_through_the_coordinators_fault_handling(monkeypatch):
    finals: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    real_report = Coordinator._report

    def report(self, run, test_id, event):
        if not run.finished and test_id not in run.reported:
            finals[test_id] += 1
            kinds[event["t"]] += 1
        return real_report(self, run, test_id, event)

    monkeypatch.setattr(Coordinator, "_report", report)
    options = Options(hosts=3, slots=3, tests=200, variants=2, long=0.05)
    rng = random.Random(2)
    big = generate(options, rng, "big", options.tests, options.variants)
    outcome, _ = simulate_runs(options, [(0.0, "big", big)], [5.0, 20.0], rng)
    # Two of three hosts lost for ten minutes: their work ran elsewhere, or was crashed
    # once its loss budget was spent (farm.faults) -- each test ended exactly once.
    assert finals == {t.id: 1 for t in big.tests}
    assert kinds["crashed"] == outcome.crashed > 0
    assert outcome.ran > kinds["result"]


def test_the_coordinator_tells_the_scheduler_of_shards_running_past_a_drain(monkeypatch):
    told: list[str] = []
    real = Coordinator._outlasted

    def outlasted(self, slot_id, shard_id):
        told.append(slot_id)
        return real(self, slot_id, shard_id)

    monkeypatch.setattr(Coordinator, "_outlasted", outlasted)
    options = Options(hosts=2, slots=2, tests=20, long=0.2, unknown=0.5)
    rng = random.Random(1)
    big = generate(options, rng, "big", options.tests, options.variants)
    outcome, _ = simulate_runs(options, [(0.0, "big", big)], [], rng)
    longest = max(big.durations.values())
    assert longest > 3600 and outcome.finish["big"] >= longest
    assert told  # the hours-long shards were reported once they had run 30 s

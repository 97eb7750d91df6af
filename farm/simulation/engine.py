"""Virtual time: slots run the real scheduler's shards, hosts fail, runs arrive.

Every scheduler call goes through :class:`Timed`, which counts it and adds
up the thread CPU time spent inside it: that is the scheduler's cost, apart
from the simulation's own bookkeeping.  Host usage is tracked here from each
shard's tests (their hints, or a slot's share), independently of the
scheduler's own accounting, so oversubscription would show if it happened.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farm.manifest import TestSpec
from farm.scheduler import Capacity, Scheduler, Shard
from farm.simulation.workload import Options, Suite, need

#: Seconds a failed host rests before its slots serve again.
HOST_REST = 600.0


class Timed:
    """The scheduler, each call counted and its CPU time added up."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.cpu = 0.0
        self.decisions = 0
        self.decision_cpu = 0.0

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        result = getattr(self.scheduler, name)(*args, **kwargs)
        spent = time.thread_time() - start
        self.cpu += spent
        if name == "next_shard":
            self.decisions += 1
            self.decision_cpu += spent
        return result


@dataclass
class _Running:
    shard: Shard
    start: float
    need: tuple[float, int]


@dataclass
class _Host:
    name: str
    slots: list[str]
    cpus: float
    memory: int
    used: tuple[float, int] = (0.0, 0)
    since: float = 0.0
    up: bool = True
    idle: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What one simulated schedule did."""

    finish: dict[str, float]  # run id -> when its last test ended
    crashed: int = 0  # tests whose retries a lost host used up
    ran: int = 0  # test executions, retries included
    oversubscribed: float = 0.0  # host-seconds with more reserved than the host has
    bars: list[tuple[str, float, float, str, bool]] = field(default_factory=list)


class Simulation:
    """One farm of ``options.hosts`` identical hosts, driven until every run ends."""

    def __init__(
        self,
        options: Options,
        timed: Timed,
        durations: dict[str, float],
        gantt: Callable[[str], bool] = lambda slot: False,
    ) -> None:
        self.options = options
        self.call = timed
        self.durations = durations
        self.gantt = gantt
        self.clock = 0.0
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = itertools.count()
        self.hosts = {
            f"host{h}": _Host(
                f"host{h}",
                [f"host{h}/{s}" for s in range(options.slots)],
                options.cpus,
                options.memory,
            )
            for h in range(options.hosts)
        }
        self.running: dict[str, _Running] = {}
        self.left: dict[str, set[str]] = {}
        self.outcome = Outcome(finish={})

    def at(self, when: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, payload))

    def run(self) -> Outcome:
        for host in self.hosts.values():
            self._admit(host)
        while self.events:
            self.clock, _, kind, payload = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(payload)
        for host in self.hosts.values():
            self._use(host, (0.0, 0))
        return self.outcome

    # -- events ------------------------------------------------------------------
    def _on_arrive(self, run: tuple[str, list[TestSpec]]) -> None:
        run_id, tests = run
        plan = self.call("planner")(tests)
        if self.call("install", run_id, plan):
            raise ValueError(f"run {run_id}: some tests fit no host")
        self.left[run_id] = {t.id for t in tests}
        self._offer_idle(self.hosts.values())

    def _on_done(self, event: tuple[str, int]) -> None:
        slot, shard_id = event
        running = self.running.get(slot)
        if running is None or running.shard.id != shard_id:
            return  # its host was lost meanwhile
        del self.running[slot]
        for test in running.shard.tests:
            self._finished(running.shard.run, test.id)
        host = self.hosts[slot.split("/")[0]]
        self._unuse(host, running.need)
        self._offer(host, slot)
        self._settle()

    def _on_fail(self, rng: random.Random) -> None:
        up = [h for h in self.hosts.values() if h.up]
        if len(up) < 2:
            return
        host = rng.choice(up)
        host.up = False
        for slot in host.slots:
            running = self.running.pop(slot, None)
            if running is None:
                continue
            self._unuse(host, running.need)
            elapsed = self.clock - running.start
            tests = list(running.shard.tests)
            while tests and self.durations[tests[0].id] <= elapsed:
                elapsed -= self.durations[tests[0].id]
                self._finished(running.shard.run, tests.pop(0).id)
            run = running.shard.run
            self.call("requeue", run, tests[1:], lost_host=host.name)
            if tests and not self.call(
                "requeue", run, (), interrupted=tests[0], lost_host=host.name
            ):
                self.outcome.crashed += 1
                self._finished(run, tests[0].id)
        for slot in host.slots:
            self.call("remove_slot", slot)
        host.idle.clear()
        for run in list(self.left):
            for test in self.call("unplaceable", run):
                self.outcome.crashed += 1
                self._finished(run, test.id)
        self.at(self.clock + HOST_REST, "back", host.name)
        self._offer_idle(self.hosts.values())

    def _on_back(self, name: str) -> None:
        host = self.hosts[name]
        host.up = True
        self._admit(host)
        self._offer_idle([host])

    # -- slots -------------------------------------------------------------------
    def _admit(self, host: _Host) -> None:
        for slot in host.slots:
            self.call("add_slot", slot, host.name, {}, Capacity(host.cpus, host.memory))
            host.idle.add(slot)

    def _offer_idle(self, hosts: Any) -> None:
        for host in list(hosts):
            for slot in sorted(host.idle):
                self._offer(host, slot)
        self._settle()

    def _settle(self) -> None:
        """Idle slots of hosts with more room ask again, as the coordinator wakes them."""
        while grown := self.call("hosts_with_room"):
            for name in grown:
                host = self.hosts[name]
                for slot in sorted(host.idle):
                    self._offer(host, slot)

    def _offer(self, host: _Host, slot: str) -> None:
        shard = self.call("next_shard", slot)
        if shard is None:
            self.call("release", slot)
            host.idle.add(slot)
            return
        host.idle.discard(slot)
        needs = [need(t, self.options) for t in shard.tests]
        taken = (max(c for c, _ in needs), max(m for _, m in needs))
        self._use(host, (host.used[0] + taken[0], host.used[1] + taken[1]))
        self.running[slot] = _Running(shard, self.clock, taken)
        seconds = sum(self.durations[t.id] for t in shard.tests)
        self.outcome.ran += len(shard.tests)
        if self.gantt(slot):
            heavy = any(t.cpus or t.memory for t in shard.tests)
            self.outcome.bars.append((slot, self.clock, self.clock + seconds, shard.run, heavy))
        self.at(self.clock + seconds, "done", (slot, shard.id))

    def _unuse(self, host: _Host, taken: tuple[float, int]) -> None:
        self._use(host, (host.used[0] - taken[0], host.used[1] - taken[1]))

    def _use(self, host: _Host, used: tuple[float, int]) -> None:
        """Set the host's usage, first counting the time it spent over capacity."""
        if host.used[0] > host.cpus + 1e-6 or host.used[1] > host.memory:
            self.outcome.oversubscribed += self.clock - host.since
        host.used, host.since = used, self.clock

    def _finished(self, run: str, test_id: str) -> None:
        self.call("finished", run, test_id)
        left = self.left[run]
        left.discard(test_id)
        if not left:
            self.outcome.finish[run] = self.clock
            del self.left[run]
            self.call("forget", run)


def simulate_runs(
    options: Options,
    runs: list[tuple[float, str, Suite]],
    failures: list[float],
    rng: random.Random,
    gantt: Callable[[str], bool] = lambda slot: False,
) -> tuple[Outcome, Timed]:
    """Run *runs* (arrival, id, suite) on a fresh farm; a host fails at each of *failures*."""
    timed = Timed(Scheduler(min_shard_seconds=options.min_shard_seconds))
    durations: dict[str, float] = {}
    for _, _, suite in runs:
        durations.update(suite.durations)
    sim = Simulation(options, timed, durations, gantt)
    for arrival, run_id, suite in runs:
        sim.at(arrival, "arrive", (run_id, suite.tests))
    for when in failures:
        sim.at(when, "fail", rng)
    return sim.run(), timed

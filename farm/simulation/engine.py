"""Virtual time: the farm's real coordinator serves simulated hosts, hosts fail, runs arrive.

A :class:`~farm.coordinator.Coordinator` — its slot tasks, worker talk, host
faults, quarantine timers and event streams, unchanged — runs on a
:class:`~farm.simulation.virtual.VirtualLoop` over
:class:`~farm.simulation.hosts.SimHost` hosts.  Each run is submitted at its
arrival time and read by a client task, as a client reads its stream; a run
ends where its last test's final event was emitted.

The coordinator's scheduler is a :class:`TimedScheduler`: every call is
counted and the thread CPU time spent inside it added up, which is the
scheduler's cost apart from the coordinator's and the simulation's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farm.coordinator import Coordinator
from farm.manifest import RunManifest, WorkerSpec
from farm.scheduler import Capacity, Scheduler
from farm.simulation.hosts import Bar, SimHost
from farm.simulation.virtual import VirtualLoop
from farm.simulation.workload import Options, Suite, need

#: Seconds a lost host stays down before its spawns work again.
HOST_REST = 600.0
#: What the simulated workers run: nothing starts a process, but a manifest names one.
_WORKER = WorkerSpec(argv=("simulated",), cwd="/simulated")


class TimedScheduler(Scheduler):
    """The farm's scheduler, each call from outside counted and its CPU time added up."""

    cpu = 0.0
    decisions = 0
    decision_cpu = 0.0
    _depth = 0


def _timed(name: str) -> Callable[..., Any]:
    method = getattr(Scheduler, name)

    def call(self: TimedScheduler, *args: Any, **kwargs: Any) -> Any:
        if self._depth:  # a call from inside the scheduler is part of the outer one
            return method(self, *args, **kwargs)
        self._depth += 1
        start = time.thread_time()
        try:
            return method(self, *args, **kwargs)
        finally:
            spent = time.thread_time() - start
            self._depth -= 1
            self.cpu += spent
            if name == "next_shard":
                self.decisions += 1
                self.decision_cpu += spent

    call.__name__ = name
    return call


for _name in (
    "add_slot",
    "remove_slot",
    "release",
    "hosts_with_room",
    "install",
    "next_shard",
    "outlasted",
    "finished",
    "requeue",
    "cancel",
    "forget",
    "unplaceable",
    "queued",
):
    setattr(TimedScheduler, _name, _timed(_name))


@dataclass
class Outcome:
    """What one simulated schedule did."""

    finish: dict[str, float]  # run name -> when its last test's final event came
    crashed: int = 0  # tests reported crashed (their retries spent with lost hosts)
    ran: int = 0  # test executions, retries included
    oversubscribed: float = 0.0  # host-seconds with more in use than the host has
    bars: list[Bar] = field(default_factory=list)


async def _client(coordinator: Coordinator, name: str, suite: Suite, outcome: Outcome) -> None:
    """Submit *suite* as run *name* and read its stream to the end, as a client does."""
    manifest = RunManifest(tests=tuple(suite.tests), worker=_WORKER, name=name)
    run = await coordinator.submit(manifest, owner="simulation")
    run.attached = True
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        event = await run.events.get()
        while True:
            kind = event["t"]
            if kind in ("result", "crashed"):
                last = loop.time()
                outcome.crashed += kind == "crashed"
            elif kind == "done":
                if event["status"] != "complete":
                    raise RuntimeError(f"run {name} ended {event['status']}: {event['reason']}")
                outcome.finish[name] = last
                return
            if run.events.empty():
                break
            event = run.events.get_nowait()


async def _farm(
    options: Options,
    runs: list[tuple[float, str, Suite]],
    failures: list[float],
    rng: random.Random,
    drawn: Callable[[str], bool],
) -> tuple[Outcome, TimedScheduler]:
    durations: dict[str, float] = {}
    for _, _, suite in runs:
        durations.update(suite.durations)
    capacity = Capacity(options.cpus, options.memory)
    hosts = [
        SimHost(
            f"host{h}",
            options.slots,
            capacity,
            durations,
            lambda test: need(test, options),
            min_shard_seconds=options.min_shard_seconds,
            drawn=drawn,
        )
        for h in range(options.hosts)
    ]
    scheduler = TimedScheduler(min_shard_seconds=options.min_shard_seconds)
    coordinator = Coordinator(list(hosts), scheduler)
    await coordinator.start()
    loop = asyncio.get_running_loop()
    outcome = Outcome(finish={})

    async def arrive(arrival: float, name: str, suite: Suite) -> None:
        await asyncio.sleep(arrival)
        await _client(coordinator, name, suite, outcome)

    def fail() -> None:
        up = [h for h in hosts if h.up]
        if len(up) >= 2:
            host = rng.choice(up)
            host.fail()
            loop.call_later(HOST_REST, host.back)

    for when in failures:
        loop.call_at(when, fail)
    try:
        await asyncio.gather(*(arrive(*run) for run in runs))
    finally:
        await coordinator.close()
    for host in hosts:
        host.occupy((0.0, 0), 1)  # count the last stretch
        outcome.oversubscribed += host.oversubscribed
        outcome.ran += host.executions
        outcome.bars.extend(host.bars)
    return outcome, scheduler


def simulate_runs(
    options: Options,
    runs: list[tuple[float, str, Suite]],
    failures: list[float],
    rng: random.Random,
    gantt: Callable[[str], bool] = lambda slot: False,
) -> tuple[Outcome, TimedScheduler]:
    """Run *runs* (arrival, name, suite) on a fresh farm; a host is lost at each of *failures*."""
    loop = VirtualLoop()
    # Lost hosts' quarantines are the point of a simulation, not news to log.
    farm_log = logging.getLogger("psyduck.farm")
    level = farm_log.level
    farm_log.setLevel(logging.ERROR)
    try:
        return loop.run_until_complete(_farm(options, runs, failures, rng, gantt))
    finally:
        farm_log.setLevel(level)
        loop.close()

"""Simulated hosts for the real coordinator: workers that "run" a test by waiting its duration.

A :class:`SimHost` is a :class:`farm.hosts.base.Host` like any other: the
coordinator starts its workers, fits and sends them shards, drains and kills
them, and hears from them exactly the messages a real worker sends
(``ready``, ``started``, ``result`` with ``next``, ``idle``, ``done``).  A
:class:`SimWorker` answers a shard by setting a timer per test for its true
duration; on :class:`~farm.simulation.virtual.VirtualLoop` those timers cost no
waiting.  A host can be lost (:meth:`SimHost.fail`): its workers vanish
mid-test, as with a host whose engine went away, and its spawns fail until it
is :meth:`~SimHost.back`.

Each host also measures what its running shards occupy (their tests' hints,
or a slot's share), independently of the scheduler's own accounting, so that
oversubscription would show if it happened.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from farm.hosts.base import ExitInfo, Host, HostError, RunContext, WorkerConnection
from farm.manifest import TestSpec
from farm.scheduling.capacity import Capacity

#: A shard drawn in the Gantt picture: slot, start, end, run name, reserving more than a share.
Bar = tuple[str, float, float, str, bool]


class SimHost(Host):
    """*slots* workers' places on a host of *capacity*; tests last ``durations[id]`` seconds."""

    def __init__(
        self,
        name: str,
        slots: int,
        capacity: Capacity,
        durations: dict[str, float],
        need: Callable[[TestSpec], tuple[float, int]],
        *,
        min_shard_seconds: float = 0.0,
        drawn: Callable[[str], bool] = lambda slot: False,
    ) -> None:
        self.name = name
        self.slots = slots
        self.labels = {}
        self.min_shard_seconds = min_shard_seconds
        self.durations = durations
        self.need = need
        self.drawn = drawn
        self.up = True
        self.workers: set[SimWorker] = set()
        self._capacity = capacity
        self.used: tuple[float, int] = (0.0, 0)
        self.since = 0.0
        #: Host-seconds spent with more CPUs or memory in use than the host has.
        self.oversubscribed = 0.0
        #: Tests sent to this host's workers, retries included.
        self.executions = 0
        self.bars: list[Bar] = []

    def capacity(self) -> Capacity:
        return self._capacity

    async def spawn(
        self, run: RunContext, slot: int, worker_id: str, on_output: Any
    ) -> WorkerConnection:
        if not self.up:
            raise HostError(f"simulated host {self.name} is down")
        worker = SimWorker(self, f"{self.name}/{slot}", run.manifest.name)
        self.workers.add(worker)
        return worker

    def fail(self) -> None:
        """The host is lost: every worker vanishes mid-test; spawns fail until :meth:`back`."""
        self.up = False
        for worker in list(self.workers):
            worker.end(ExitInfo(host_lost=True, detail=f"simulated host {self.name} was lost"))

    def back(self) -> None:
        self.up = True

    # -- what the running shards occupy --------------------------------------------
    def occupy(self, taken: tuple[float, int], sign: int) -> None:
        """Add (*sign* 1) or remove (-1) a shard's use, first counting time spent over capacity."""
        now = asyncio.get_running_loop().time()
        capacity = self._capacity
        if self.used[0] > capacity.cpus + 1e-6 or self.used[1] > capacity.memory:
            self.oversubscribed += now - self.since
        self.used = (self.used[0] + sign * taken[0], self.used[1] + sign * taken[1])
        self.since = now


class SimWorker(WorkerConnection):
    """One worker: ready at once, each test a timer of its true duration."""

    def __init__(self, host: SimHost, slot: str, run_name: str) -> None:
        self.host = host
        self.slot = slot
        self.run_name = run_name
        self.loop = asyncio.get_running_loop()
        self.inbox: deque[dict[str, Any]] = deque([{"t": "ready"}])
        self.waiter: asyncio.Future[None] | None = None
        self.exit: asyncio.Future[ExitInfo] = self.loop.create_future()
        self.pending: deque[str] = deque()
        self.timer: asyncio.TimerHandle | None = None
        #: What the shard being run occupies, its start and whether it is drawn heavy.
        self.taken: tuple[float, int] | None = None
        self.heavy = False
        self.shard_start = 0.0

    def _put(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def recv(self) -> dict[str, Any] | None:
        while not self.inbox:
            if self.exit.done():
                return None
            self.waiter = self.loop.create_future()
            await self.waiter
        return self.inbox.popleft()

    async def fit(self, tests: Sequence[TestSpec]) -> None:
        needs = [self.host.need(t) for t in tests]
        self.taken = (max(c for c, _ in needs), max(m for _, m in needs))
        self.heavy = any(t.cpus or t.memory for t in tests)

    async def send(self, message: dict[str, Any]) -> None:
        if self.exit.done():
            raise ConnectionResetError("the simulated worker is gone")
        kind = message["t"]
        if kind == "run":
            self.pending.extend(t["id"] for t in message["tests"])
            self.host.executions += len(self.pending)
            self.shard_start = self.loop.time()
            if self.taken is not None:
                self.host.occupy(self.taken, 1)
            self._put({"t": "started", "id": self.pending[0]})
            self._next_timer()
        elif kind in ("drain", "stop"):
            self._put({"t": "done"})
            self.end(ExitInfo(status=0))

    def _next_timer(self) -> None:
        seconds = self.host.durations[self.pending[0]]
        self.timer = self.loop.call_later(seconds, self._test_ended)

    def _test_ended(self) -> None:
        test_id = self.pending.popleft()
        following = self.pending[0] if self.pending else None
        seconds = self.host.durations[test_id]
        self._put(
            {"t": "result", "id": test_id, "payload": b"", "duration": seconds, "next": following}
        )
        if following is not None:
            self._next_timer()
        else:
            self.timer = None
            self._shard_ended()
            self._put({"t": "idle"})

    def _shard_ended(self) -> None:
        if self.taken is not None:
            self.host.occupy(self.taken, -1)
            if self.host.drawn(self.slot):
                bar = (self.slot, self.shard_start, self.loop.time(), self.run_name, self.heavy)
                self.host.bars.append(bar)
            self.taken = None

    def end(self, info: ExitInfo) -> None:
        """The worker is gone (*info* says how): its running shard stops, its channel closes."""
        if self.exit.done():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self._shard_ended()
        if info.host_lost:
            self.inbox.clear()  # its host took the channel with it
        self.exit.set_result(info)
        self.host.workers.discard(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def kill(self) -> None:
        self.end(ExitInfo(signal=9))

    async def wait(self) -> ExitInfo:
        return await self.exit

    def output(self) -> str:
        return ""
